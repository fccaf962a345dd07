# vmm-cert-exporter:find-run-as-account/1
$Params = ''
# Runs on the VMM server. Read-only: how many Run As accounts carry exactly the given name, so
# that renewal can refuse an ambiguous or missing account before it deletes anything.
# Parameters: {"run_as_account":"<name>"}. Contract: docs/powershell-contract.md.
$ErrorActionPreference = 'Stop'
# Progress records would reach the caller as CLIXML on stderr.
$ProgressPreference = 'SilentlyContinue'
# The VMM module warns on import; the console host prints warnings on stdout.
$WarningPreference = 'SilentlyContinue'
$InformationPreference = 'SilentlyContinue'
# Hardened hosts (AppLocker/WDAC) run ConstrainedLanguage, where the method calls below fail:
# say so in a result of its own instead of an opaque error.
$lm = [string]$ExecutionContext.SessionState.LanguageMode
if ($lm -ne 'FullLanguage') {
    Write-Output ('{"schema":1,"status":"LanguageMode","language_mode":"' + $lm + '"}')
    exit 3
}
try {
    # Best effort: some hosts have no console to set the encoding on.
    try { [Console]::OutputEncoding = New-Object System.Text.UTF8Encoding $false } catch { }
    $p = [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($Params)) | ConvertFrom-Json
    Import-Module virtualmachinemanager
    $null = Get-SCVMMServer -ComputerName localhost
    # -Name takes wildcards ('VMM*' would match several): compare the names exactly instead.
    $found = @(Get-SCRunAsAccount | Where-Object { $_.Name -eq $p.run_as_account })
    $out = [ordered]@{ schema = 1; run_as_account = $p.run_as_account; matches = $found.Count }
    [Console]::Out.Write((ConvertTo-Json -InputObject $out -Depth 3 -Compress))
    exit 0
} catch {
    [Console]::Error.WriteLine('find-run-as-account failed: ' + $_.Exception.Message)
    exit 1
}

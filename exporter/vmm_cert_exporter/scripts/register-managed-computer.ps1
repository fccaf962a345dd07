# vmm-cert-exporter:register-managed-computer/1
$Params = ''
# Runs on the VMM server, as a VMM administrator: step 2 of renewal procedure 1 (VMM gives
# the computer a new self-signed certificate). Parameters:
# {"computer":"<FQDN>","run_as_account":"<VMM Run As account name>"}.
# Contract: docs/powershell-contract.md. Windows PowerShell 5.1.
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
# The one JSON document, on success and on failure alike.
function Write-Result([string]$status, $err) {
    $r = [ordered]@{ schema = 1; status = $status; error = $err }
    [Console]::Out.Write((ConvertTo-Json -InputObject $r -Depth 3 -Compress))
}
try {
    # Best effort: some hosts have no console to set the encoding on.
    try { [Console]::OutputEncoding = New-Object System.Text.UTF8Encoding $false } catch { }
    $p = [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($Params)) | ConvertFrom-Json
    Import-Module virtualmachinemanager
    $null = Get-SCVMMServer -ComputerName localhost
    # A Run As account keeps the password inside VMM: none travels over WinRM. -Name takes
    # wildcards, so the name is compared exactly and must match one account only.
    $runAs = @(Get-SCRunAsAccount | Where-Object { $_.Name -eq $p.run_as_account })
    if ($runAs.Count -ne 1) {
        throw "expected exactly one Run As account named '$($p.run_as_account)', found $($runAs.Count)"
    }
    $mc = Get-SCVMMManagedComputer -ComputerName $p.computer
    if (-not $mc) { throw "not a VMM managed computer: $($p.computer)" }
    # $null = : the cmdlet returns the managed computer, which must not reach stdout.
    $null = $mc | Register-SCVMMManagedComputer -Credential $runAs[0]
    Write-Result 'Completed' $null
    exit 0
} catch {
    $msg = $_.Exception.Message
    Write-Result 'Failed' $msg
    [Console]::Error.WriteLine('register-managed-computer failed: ' + $msg)
    exit 1
}

# vmm-cert-exporter:update-vmm-certificate/1
$Params = ''
# Runs on the VMM server, as a VMM administrator: renewal procedure 2, which renews the VMM
# server's own certificate (the only supported method on a highly available VMM server).
# Parameters: {"vmm_server":"<VMM server FQDN>"}. Contract: docs/powershell-contract.md.
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
    # A clear message instead of CommandNotFoundException on older update rollups.
    if (-not (Get-Command Update-SCVMMCertificate -ErrorAction SilentlyContinue)) {
        throw 'Update-SCVMMCertificate is not available: needs VMM 2016 UR10, 2019 UR2 or later'
    }
    $null = Update-SCVMMCertificate -VMMServer $p.vmm_server
    Write-Result 'Completed' $null
    exit 0
} catch {
    $msg = $_.Exception.Message
    Write-Result 'Failed' $msg
    [Console]::Error.WriteLine('update-vmm-certificate failed: ' + $msg)
    exit 1
}

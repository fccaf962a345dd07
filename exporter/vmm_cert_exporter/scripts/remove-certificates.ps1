# vmm-cert-exporter:remove-certificates/1
$Params = ''
# Runs on a managed computer, as a local administrator: step 1 of renewal procedure 1.
# Parameters: {"thumbprints":["<40 hex>", ...]}. Contract: docs/powershell-contract.md.
$ErrorActionPreference = 'Stop'
# Progress records would reach the caller as CLIXML on stderr.
$ProgressPreference = 'SilentlyContinue'
# The console host prints warnings and information records on stdout.
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
    $want = @($p.thumbprints | ForEach-Object { ([string]$_).ToUpperInvariant() })
    # Defence in depth: the renderer already refuses anything else.
    foreach ($t in $want) {
        if ($t -notmatch '^[0-9A-F]{40}$') { throw "not a thumbprint: $t" }
    }
    $fqdn = [System.Net.Dns]::GetHostByName($env:COMPUTERNAME).HostName
    # Only SCVMM certificates, even when asked for another thumbprint (defence in depth).
    # Selected first: deleting while Get-ChildItem still enumerates the store is unsafe.
    $victims = @(Get-ChildItem -Path Cert:\LocalMachine\My | Where-Object {
            $_.FriendlyName -like 'SCVMM_CERTIFICATE_KEY_CONTAINER*' -and
            $want -contains $_.Thumbprint.ToUpperInvariant()
        })
    $removed = @()
    foreach ($c in $victims) {
        # No -DeleteKey: the support article deletes the certificate, not its key container.
        Remove-Item -LiteralPath ('Cert:\LocalMachine\My\' + $c.Thumbprint)
        $removed += $c.Thumbprint.ToUpperInvariant()
    }
    $out = [ordered]@{ schema = 1; computer = $fqdn; removed = $removed }
    [Console]::Out.Write((ConvertTo-Json -InputObject $out -Depth 4 -Compress))
    exit 0
} catch {
    [Console]::Error.WriteLine('remove-certificates failed: ' + $_.Exception.Message)
    exit 1
}

# vmm-cert-exporter:collect-certificates/1
$Params = ''
# Runs on any managed computer (and the VMM server). Read-only: lists the SCVMM self-signed
# certificates in LocalMachine\My. Contract: docs/powershell-contract.md. Parameters: none.
# Windows PowerShell 5.1: no ??, no ternary, no -AsHashtable.
$ErrorActionPreference = 'Stop'
# Progress records would reach the caller as CLIXML on stderr.
$ProgressPreference = 'SilentlyContinue'
# Warnings and information records are printed on stdout by the console host: they would
# break the "exactly one JSON document" rule.
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
    # Best effort: some hosts have no console to set the encoding on; the JSON is ASCII then
    # in practice (friendly names are SCVMM_CERTIFICATE_KEY_CONTAINER + an FQDN).
    try { [Console]::OutputEncoding = New-Object System.Text.UTF8Encoding $false } catch { }
    # Parameters arrive only as base64 of UTF-8 JSON: decoded even when unused, so a broken
    # transport fails here rather than later.
    $p = [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($Params)) | ConvertFrom-Json
    # DNS resolution of the own name yields hostname + primary DNS suffix, the name VMM puts
    # in the friendly name; WMI's Domain is the AD domain (wrong in disjoint namespaces) or
    # WORKGROUP, and WMI is slower and needs more rights.
    $fqdn = [System.Net.Dns]::GetHostByName($env:COMPUTERNAME).HostName
    $certs = @(Get-ChildItem -Path Cert:\LocalMachine\My |
        Where-Object { $_.FriendlyName -like 'SCVMM_CERTIFICATE_KEY_CONTAINER*' } |
        ForEach-Object {
            # Dates travel only inside the DER bytes: ConvertTo-Json writes dates in a
            # version-specific format, and locale-formatted text cannot be trusted.
            [ordered]@{
                store = 'My'
                thumbprint = $_.Thumbprint
                friendly_name = $_.FriendlyName
                has_private_key = $_.HasPrivateKey
                der_base64 = [Convert]::ToBase64String($_.RawData)
            }
        })
    $out = [ordered]@{ schema = 1; computer = $fqdn; certificates = $certs }
    # [Console]::Out bypasses the host's formatting (no line wrapping, no extra newline).
    [Console]::Out.Write((ConvertTo-Json -InputObject $out -Depth 6 -Compress))
    exit 0
} catch {
    [Console]::Error.WriteLine('collect-certificates failed: ' + $_.Exception.Message)
    exit 1
}

# vmm-cert-exporter:list-trusted-certificates/1
$Params = ''
# Runs on the VMM server. Read-only: lists every certificate in LocalMachine\TrustedPeople,
# where VMM keeps its copy of each managed computer's certificate. The exporter filters
# (entries named by IP address and VMMWinPEAgentOSDBootstrap are not such copies).
# Contract: docs/powershell-contract.md. Parameters: optionally {"computer":"<FQDN>"}, which
# keeps only the certificates whose friendly name, subject, SAN or DnsNameList contain that
# name, ignoring case: a superset of the exporter's matching, which still decides.
# Windows PowerShell 5.1.
$ErrorActionPreference = 'Stop'
# Progress records would reach the caller as CLIXML on stderr.
$ProgressPreference = 'SilentlyContinue'
# Warnings and information records are printed on stdout by the console host.
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
    # The name is data searched for in text, never code.
    $want = ''
    if ($p.computer) { $want = ([string]$p.computer).Trim().TrimEnd('.').ToLowerInvariant() }
    # Hostname + primary DNS suffix, as in collect-certificates.ps1.
    $fqdn = [System.Net.Dns]::GetHostByName($env:COMPUTERNAME).HostName
    $certs = @(Get-ChildItem -Path Cert:\LocalMachine\TrustedPeople | ForEach-Object {
            # DnsNameList can be missing or throw on non-English Windows (PowerShell issue
            # 24594): one certificate must not fail the call, and the DER carries the names.
            $dns = @()
            try { $dns = @($_.DnsNameList | ForEach-Object { [string]$_.Unicode }) } catch { }
            if ($want) {
                $cert = $_
                # The SAN as text (localised labels, but the names themselves unchanged).
                $san = @($cert.Extensions | Where-Object { $_.Oid.Value -eq '2.5.29.17' } |
                    ForEach-Object { $_.Format($false) })
                $text = (@([string]$cert.FriendlyName, [string]$cert.Subject) + $san + $dns) -join ' '
                if (-not $text.ToLowerInvariant().Contains($want)) { return }
            }
            [ordered]@{
                store = 'TrustedPeople'
                thumbprint = $_.Thumbprint
                friendly_name = [string]$_.FriendlyName
                has_private_key = $_.HasPrivateKey
                # DER only: dates are never sent as text.
                der_base64 = [Convert]::ToBase64String($_.RawData)
                # DnsNameList (added by PowerShell's certificate provider) is how support
                # engineers match a TrustedPeople entry to its computer.
                dns_names = $dns
            }
        })
    $out = [ordered]@{ schema = 1; vmm_server = $fqdn; certificates = $certs }
    [Console]::Out.Write((ConvertTo-Json -InputObject $out -Depth 6 -Compress))
    exit 0
} catch {
    [Console]::Error.WriteLine('list-trusted-certificates failed: ' + $_.Exception.Message)
    exit 1
}

# vmm-cert-exporter:list-managed-computers/1
$Params = ''
# Runs on the VMM server. Read-only: VMM's own list of managed computers with role and state.
# Contract: docs/powershell-contract.md. Parameters: optionally {"computer":"<FQDN>"}, which
# keeps only that computer and every VMM server entry (a renewal's read of one computer).
# Windows PowerShell 5.1.
$ErrorActionPreference = 'Stop'
# Progress records would reach the caller as CLIXML on stderr.
$ProgressPreference = 'SilentlyContinue'
# The VMM module warns on import (unapproved verbs); the console host prints warnings and
# information records on stdout, which must hold one JSON document only.
$WarningPreference = 'SilentlyContinue'
$InformationPreference = 'SilentlyContinue'
# Hardened hosts (AppLocker/WDAC) run ConstrainedLanguage, where the method calls below fail:
# say so in a result of its own instead of an opaque error.
$lm = [string]$ExecutionContext.SessionState.LanguageMode
if ($lm -ne 'FullLanguage') {
    Write-Output ('{"schema":1,"status":"LanguageMode","language_mode":"' + $lm + '"}')
    exit 3
}
# The name of a cluster node as VMM holds it: an object with an FQDN or Name, or text.
function Get-NodeName($n) {
    if ($n.FQDN) { return [string]$n.FQDN }
    if ($n.Name) { return [string]$n.Name }
    return [string]$n
}
try {
    # Best effort: some hosts have no console to set the encoding on.
    try { [Console]::OutputEncoding = New-Object System.Text.UTF8Encoding $false } catch { }
    $p = [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($Params)) | ConvertFrom-Json
    # The name is data compared with -eq (ignoring case), never code.
    $want = ''
    if ($p.computer) { $want = ([string]$p.computer).Trim().TrimEnd('.') }
    $fqdn = [System.Net.Dns]::GetHostByName($env:COMPUTERNAME).HostName
    Import-Module virtualmachinemanager
    $vmm = Get-SCVMMServer -ComputerName localhost
    # Role and State are cast to their invariant enum names (a cast, not a truthiness test,
    # keeps a zero-valued enum); the *String properties are translated display text.
    $mcs = @(Get-SCVMMManagedComputer -VMMServer $vmm | ForEach-Object {
            $name = [string]$_.FQDN
            if (-not $name) { $name = [string]$_.Name }
            # Entries of the VMM server stay: they say which names are the VMM server's.
            $role = [string]$_.Role
            if ($want -and $name.Trim().TrimEnd('.') -ne $want -and $role -notlike '*VMMServerRole*') {
                return
            }
            [ordered]@{
                fqdn = $name
                role = $role
                state = [string]$_.State
                role_display = [string]$_.RoleString
                state_display = [string]$_.StateString
                agent_version = [string]$_.AgentVersion
            }
        })
    # ActiveVMMNode and FailoverVMMNodes are null unless the VMM server is highly available.
    $nodes = @(@($vmm.ActiveVMMNode) + @($vmm.FailoverVMMNodes) |
        Where-Object { $null -ne $_ } | ForEach-Object { Get-NodeName $_ })
    # Update-SCVMMCertificate (procedure 2) exists from VMM 2016 UR10 / 2019 UR2 on: asking
    # for the cmdlet is more robust than decoding version numbers.
    $upd = [bool](Get-Command Update-SCVMMCertificate -ErrorAction SilentlyContinue)
    # An HA VMM server answers with its clustered role name, which is what VMM calls it.
    $server = [string]$vmm.FQDN
    if (-not $server) { $server = $fqdn }
    $out = [ordered]@{
        schema = 1
        vmm_server = $server
        vmm_version = [string]$vmm.ProductVersion
        high_availability = [bool]$vmm.IsHighlyAvailable
        supports_update_certificate = $upd
        ha_nodes = $nodes
        managed_computers = $mcs
        computer = $fqdn
    }
    [Console]::Out.Write((ConvertTo-Json -InputObject $out -Depth 6 -Compress))
    exit 0
} catch {
    [Console]::Error.WriteLine('list-managed-computers failed: ' + $_.Exception.Message)
    exit 1
}

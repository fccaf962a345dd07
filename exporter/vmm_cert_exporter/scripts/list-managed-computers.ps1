# vmm-cert-exporter:list-managed-computers/1
$Params = ''
# Runs on the VMM server. Read-only: VMM's own list of managed computers with role and state.
# Contract: docs/powershell-contract.md. Parameters: none. Windows PowerShell 5.1.
$ErrorActionPreference = 'Stop'
# Progress records would reach the caller as CLIXML on stderr.
$ProgressPreference = 'SilentlyContinue'
# The VMM module warns on import (unapproved verbs); the console host prints warnings and
# information records on stdout, which must hold one JSON document only.
$WarningPreference = 'SilentlyContinue'
$InformationPreference = 'SilentlyContinue'
# First non-empty of two values, as a string: the *String properties are VMM's display names
# and are not present on every version, so fall back to the enum's name.
function Get-First($a, $b) {
    if ($a) { return [string]$a }
    return [string]$b
}
try {
    # Best effort: some hosts have no console to set the encoding on.
    try { [Console]::OutputEncoding = New-Object System.Text.UTF8Encoding $false } catch { }
    # Decoded even when unused, so a broken transport fails here.
    $p = [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($Params)) | ConvertFrom-Json
    $fqdn = [System.Net.Dns]::GetHostByName($env:COMPUTERNAME).HostName
    Import-Module virtualmachinemanager
    $vmm = Get-SCVMMServer -ComputerName localhost
    $mcs = @(Get-SCVMMManagedComputer -VMMServer $vmm | ForEach-Object {
            [ordered]@{
                fqdn = Get-First $_.FQDN $_.Name
                role = Get-First $_.RoleString $_.Role
                state = Get-First $_.StateString $_.State
                agent_version = [string]$_.AgentVersion
            }
        })
    # Update-SCVMMCertificate (procedure 2) exists from VMM 2016 UR10 / 2019 UR2 on: asking
    # for the cmdlet is more robust than decoding version numbers.
    $upd = [bool](Get-Command Update-SCVMMCertificate -ErrorAction SilentlyContinue)
    # An HA VMM server answers with its clustered role name, which is what VMM calls it.
    $out = [ordered]@{
        schema = 1
        vmm_server = Get-First $vmm.FQDN $fqdn
        vmm_version = [string]$vmm.ProductVersion
        high_availability = [bool]$vmm.IsHighlyAvailable
        supports_update_certificate = $upd
        managed_computers = $mcs
        computer = $fqdn
    }
    [Console]::Out.Write((ConvertTo-Json -InputObject $out -Depth 6 -Compress))
    exit 0
} catch {
    [Console]::Error.WriteLine('list-managed-computers failed: ' + $_.Exception.Message)
    exit 1
}

@{
    RootModule           = 'Baton.psm1'
    ModuleVersion        = '0.1.0'
    GUID                 = '7b262e71-6235-4583-9660-75d5cf02c0c7'
    Author               = 'The baton authors'
    Description          = 'Run a section of a script under a baton lock: FIFO queue, long-poll waits, background renewal, release in finally.'
    # Written for Windows PowerShell 5.1 (Desktop, .NET Framework 4.5+) and PowerShell 7 (Core).
    PowerShellVersion    = '5.1'
    CompatiblePSEditions = @('Desktop', 'Core')
    FunctionsToExport    = @('Invoke-BatonLock', 'Get-BatonLock', 'Get-BatonJob')
    CmdletsToExport      = @()
    VariablesToExport    = @()
    AliasesToExport      = @()
    PrivateData          = @{
        PSData = @{
            Tags       = @('lock', 'mutex', 'lease', 'baton')
            LicenseUri = 'https://www.apache.org/licenses/LICENSE-2.0'
        }
    }
}

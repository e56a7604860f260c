# Baton.psm1: run a section of a PowerShell script under a baton lock.
#
# Written for Windows PowerShell 5.1 (.NET Framework 4.5 or newer) and PowerShell 7, so it uses
# neither `??`, `?.`, the ternary operator nor `&&`/`||`, and nothing of Invoke-RestMethod that
# 5.1 lacks (-SkipHttpErrorCheck, -StatusCodeVariable). The HTTP contract it follows is the
# server's OpenAPI document (GET /v1/openapi.json); see README.md beside this file.

# Windows PowerShell 5.1 runs on .NET Framework, whose defaults do not suit a lock client:
# TLS 1.2 may be off, POST bodies wait for "100 Continue", and only two connections per host
# are allowed (the renewal runs beside the script block, and locks may nest).
if ($PSVersionTable.PSVersion.Major -lt 6) {
    [Net.ServicePointManager]::SecurityProtocol =
        [Net.ServicePointManager]::SecurityProtocol -bor [Net.SecurityProtocolType]::Tls12
    [Net.ServicePointManager]::Expect100Continue = $false
    if ([Net.ServicePointManager]::DefaultConnectionLimit -lt 16) {
        [Net.ServicePointManager]::DefaultConnectionLimit = 16
    }
}

# The longest long-poll asked for, in seconds (the server caps waits at 60 s).
$script:LongPollSeconds = 30
# How long a request may take beyond the time the server may hold it open.
$script:RequestTimeoutSeconds = 15

function Get-BatonClock {
    # Seconds on a monotonic clock: lease deadlines must not move with the wall clock.
    [Diagnostics.Stopwatch]::GetTimestamp() / [double][Diagnostics.Stopwatch]::Frequency
}

function New-BatonError {
    param([string]$Code, [string]$Message, [int]$Status = 0, [bool]$Connect = $false)
    # One exception type; scripts match on $_.Exception.Data['BatonCode'], a stable code.
    $exception = New-Object System.Exception ("baton: ${Code}: $Message")
    $exception.Data['BatonCode'] = $Code
    $exception.Data['HttpStatus'] = $Status
    $exception.Data['BatonConnect'] = $Connect
    $exception
}

function ConvertTo-BatonError {
    param($Record)
    $exception = $Record.Exception
    $response = $null
    if ($exception.PSObject.Properties['Response']) { $response = $exception.Response }
    if ($null -eq $response) {
        # No answer. Whether the request left matters for fail-over: only a failed connection
        # (5.1: WebException ConnectFailure/NameResolutionFailure; 7: HttpRequestException)
        # is safe to send to the next server at once.
        $connect = $false
        if ($exception -is [System.Net.WebException]) {
            $connect = ($exception.Status -eq 'ConnectFailure') -or
                ($exception.Status -eq 'NameResolutionFailure')
        }
        elseif ($exception.GetType().FullName -eq 'System.Net.Http.HttpRequestException') {
            $connect = $true
        }
        return New-BatonError 'unavailable' $exception.Message 0 $connect
    }
    $status = [int]$response.StatusCode
    # PowerShell 7 puts the error body in ErrorDetails; 5.1 often only in the response stream.
    $text = $null
    if ($Record.ErrorDetails -and $Record.ErrorDetails.Message) {
        $text = $Record.ErrorDetails.Message
    }
    elseif ($response.PSObject.Methods['GetResponseStream']) {
        try {
            $stream = $response.GetResponseStream()
            if ($stream.CanSeek) { $stream.Position = 0 }
            $reader = New-Object System.IO.StreamReader($stream)
            $text = $reader.ReadToEnd()
            $reader.Dispose()
        }
        catch { $text = $null }
    }
    $code = "http_$status"
    $message = "HTTP $status"
    if ($text) {
        try {
            $parsed = $text | ConvertFrom-Json
            if ($parsed.error -and $parsed.error.code) {
                $code = [string]$parsed.error.code
                $message = [string]$parsed.error.message
                if ($parsed.holders) {
                    $owners = @($parsed.holders | ForEach-Object { "$($_.owner) (token $($_.token))" })
                    $message = "$message; held by $($owners -join ', ')"
                }
            }
            else { $message = "HTTP ${status}: $text" }
        }
        catch { $message = "HTTP ${status}: $text" }
    }
    $connect = $false
    if (($status -ge 502) -and ($status -le 504)) { $code = 'unavailable' }
    New-BatonError $code $message $status $connect
}

function Invoke-BatonHttp {
    # One call to the API: JSON body in UTF-8, the API key, fail-over between the servers of
    # $Settings.Urls on connection failures, and retries of answers that say "try later".
    # Every call this module makes is safe to repeat (acquires carry a request id). Returns
    # the decoded answer and when the answered request was sent.
    param($Settings, [string]$Method, [string]$Path, $Body = $null,
        [int]$TimeoutSec = 15, [int]$Attempts = 3)
    # No Accept header: the server always answers JSON, and .NET Framework's HttpWebRequest
    # (under 5.1) treats Accept as a restricted header.
    $headers = @{}
    if ($Settings.ApiKey) { $headers['Authorization'] = "Bearer $($Settings.ApiKey)" }
    $bytes = $null
    if ($null -ne $Body) {
        $bytes = [Text.Encoding]::UTF8.GetBytes(($Body | ConvertTo-Json -Compress))
    }
    $attempt = 1
    while ($true) {
        $failures = @()
        $lastError = $null
        $count = $Settings.Urls.Count
        for ($offset = 0; $offset -lt $count; $offset++) {
            $index = ($Settings.Preferred + $offset) % $count
            $request = @{
                Method          = $Method
                Uri             = $Settings.Urls[$index] + $Path
                Headers         = $headers
                TimeoutSec      = $TimeoutSec
                UseBasicParsing = $true
                ErrorAction     = 'Stop'
            }
            if ($null -ne $bytes) {
                $request['Body'] = $bytes
                $request['ContentType'] = 'application/json; charset=utf-8'
            }
            $sentAt = Get-BatonClock
            try {
                $answer = Invoke-RestMethod @request
                $Settings.Preferred = $index
                return New-Object PSObject -Property @{ Body = $answer; SentAt = $sentAt }
            }
            catch {
                $lastError = ConvertTo-BatonError $_
                if ($lastError.Data['BatonConnect']) {
                    $failures += "$($Settings.Urls[$index]): $($lastError.Message)"
                    continue
                }
                $Settings.Preferred = $index
                break
            }
        }
        if ($null -eq $lastError -or $lastError.Data['BatonConnect']) {
            $lastError = New-BatonError 'unavailable' ("cannot reach the baton server (" +
                ($failures -join '; ') + ")")
        }
        $code = $lastError.Data['BatonCode']
        $retryable = ($code -eq 'unavailable') -or ($code -eq 'limit_reached') -or
            ($code -eq 'rate_limited')
        if ((-not $retryable) -or ($attempt -ge $Attempts)) { throw $lastError }
        if ($count -gt 1) { $Settings.Preferred = ($Settings.Preferred + 1) % $count }
        Start-Sleep -Milliseconds ([int](200 * [math]::Pow(2, $attempt - 1)))
        $attempt++
    }
}

function New-BatonSettings {
    param([string]$Url, [string]$ApiKey)
    if (-not $Url) { $Url = $env:BATON_URL }
    if (-not $Url) { $Url = 'http://127.0.0.1:7878' }
    if (-not $ApiKey) { $ApiKey = $env:BATON_API_KEY }
    $urls = @($Url -split ',' | ForEach-Object { $_.Trim().TrimEnd('/') } | Where-Object { $_ })
    if ($urls.Count -eq 0) { throw (New-BatonError 'config' 'no server URL given; set BATON_URL or pass -Url') }
    @{ Urls = $urls; ApiKey = $ApiKey; Preferred = 0 }
}

function Get-BatonLockPath {
    param([string]$Name, [string]$Suffix = '')
    # A lock name is ONE path segment: team-a/deploy travels as team-a%2Fdeploy (.NET 4.5 and
    # newer keep %2F as it is).
    '/v1/locks/' + [Uri]::EscapeDataString($Name) + $Suffix
}

function Wait-BatonLease {
    # Joins the lock's FIFO queue and long-polls the ticket until granted. However the wait
    # ends (timeout, error, Ctrl-C), the ticket is deleted, so the lock is never granted to a
    # waiter that has gone.
    param($Settings, [string]$Name, [int]$TtlSeconds, [int]$TimeoutSeconds, [string]$Owner,
        [int]$Capacity)
    $started = Get-BatonClock
    $tryOnce = $TimeoutSeconds -eq 0
    $requestId = [guid]::NewGuid().ToString('N')
    while ($true) {
        # wait_ms 0: the ticket id comes back at once, so every long wait is on a ticket this
        # waiter can delete.
        $body = @{ owner = $Owner; queue = (-not $tryOnce); wait_ms = 0; request_id = $requestId }
        if ($TtlSeconds -gt 0) { $body['ttl_ms'] = [int64]$TtlSeconds * 1000 }
        if ($Capacity -gt 0) { $body['capacity'] = $Capacity }
        $answer = Invoke-BatonHttp $Settings 'POST' (Get-BatonLockPath $Name '/acquire') $body
        if ($answer.Body.lease) { return $answer }
        $ticket = $answer.Body.ticket
        $granted = $null
        $requeue = $false
        try {
            while ($true) {
                $wait = $script:LongPollSeconds
                if ($TimeoutSeconds -gt 0) {
                    $left = $started + $TimeoutSeconds - (Get-BatonClock)
                    if ($left -le 0) {
                        throw (New-BatonError 'timed_out' "timed out after $TimeoutSeconds s waiting for lock '$Name'")
                    }
                    if ($left -lt $wait) { $wait = $left }
                }
                $waitBody = @{ wait_ms = [int64][math]::Ceiling($wait * 1000) }
                $timeout = [int][math]::Ceiling($wait) + $script:RequestTimeoutSeconds
                try {
                    $answer = Invoke-BatonHttp $Settings 'POST' "/v1/tickets/$($ticket.id)/wait" $waitBody $timeout
                }
                catch {
                    $code = $_.Exception.Data['BatonCode']
                    if (($code -eq 'ticket_lapsed') -or ($code -eq 'ticket_cancelled') -or
                        ($code -eq 'ticket_not_found')) {
                        # It left the queue while we could not wait on it: queue again.
                        $requeue = $true
                        break
                    }
                    if ($code -eq 'unavailable') { Start-Sleep -Milliseconds 500; continue }
                    throw
                }
                if ($answer.Body.lease) { $granted = $answer; break }
                $ticket = $answer.Body.ticket
            }
        }
        finally {
            if (($null -eq $granted) -and (-not $requeue)) {
                try {
                    Invoke-BatonHttp $Settings 'DELETE' "/v1/tickets/$($ticket.id)" $null 10 1 | Out-Null
                }
                catch { Write-Verbose "cannot delete the ticket; it lapses by itself: $($_.Exception.Message)" }
            }
        }
        if ($granted) { return $granted }
        $requestId = [guid]::NewGuid().ToString('N')
    }
}

# The renewal loop, run in a runspace of its own so it renews while the script block runs
# whatever that block does. It keeps the lease's local deadline in $state.Deadline: counted
# from when the granting or renewing request was SENT, plus expires_in_ms, less a drift margin
# (1% of the ttl + 100 ms), so it is never later than the server's.
$script:RenewLoop = {
    param($state, $settings, $granted, $functions)
    foreach ($name in $functions.Keys) {
        Set-Item -Path "function:$name" -Value ([scriptblock]::Create($functions[$name]))
    }
    $leaseId = $granted.Body.lease.id
    $ttl = $granted.Body.lease.ttl_ms / 1000.0
    $next = $granted.SentAt + [math]::Min($granted.Body.lease.expires_in_ms / 1000.0, $ttl) / 3
    $failures = 0
    while ($true) {
        $deadline = $state.Deadline
        $sleep = [math]::Min($next, $deadline) - (Get-BatonClock)
        if ($sleep -lt 0) { $sleep = 0 }
        if ($state.Stop.WaitOne([int]($sleep * 1000))) { return }
        if ((Get-BatonClock) -ge $deadline) { $state.Lost = 'deadline_exceeded'; return }
        # The renewal may not outlive the deadline.
        $timeout = [int][math]::Ceiling($deadline - (Get-BatonClock))
        if ($timeout -lt 1) { $timeout = 1 }
        try {
            $answer = Invoke-BatonHttp $settings 'POST' "/v1/leases/$leaseId/renew" @{} $timeout 1
        }
        catch {
            if ($state.Stop.WaitOne(0)) { return }
            $code = $_.Exception.Data['BatonCode']
            if (($code -eq 'lease_lost') -or ($code -eq 'revoked') -or ($code -eq 'lease_not_found')) {
                $state.Lost = $code
                return
            }
            # An outage or a 5xx may pass: retry (200 ms doubling to 2 s) until the deadline.
            $failures++
            $state.LastError = $_.Exception.Message
            $next = (Get-BatonClock) + [math]::Min(2.0, 0.2 * [math]::Pow(2, $failures - 1))
            continue
        }
        $failures = 0
        $lease = $answer.Body.lease
        $ttl = $lease.ttl_ms / 1000.0
        $expiresIn = $lease.expires_in_ms / 1000.0
        $state.Deadline = $answer.SentAt + [math]::Max(0, $expiresIn - ($ttl / 100 + 0.1))
        $next = $answer.SentAt + [math]::Min($expiresIn, $ttl) / 3
    }
}

function Start-BatonRenewal {
    param($Settings, $Granted)
    $lease = $Granted.Body.lease
    $ttl = $lease.ttl_ms / 1000.0
    $state = [hashtable]::Synchronized(@{
            Lost      = $null
            LastError = $null
            Deadline  = $Granted.SentAt + [math]::Max(0, $lease.expires_in_ms / 1000.0 - ($ttl / 100 + 0.1))
            Stop      = New-Object System.Threading.ManualResetEvent $false
        })
    $functions = @{}
    foreach ($name in 'Get-BatonClock', 'New-BatonError', 'ConvertTo-BatonError', 'Invoke-BatonHttp') {
        $functions[$name] = (Get-Command $name).ScriptBlock.ToString()
    }
    $shell = [PowerShell]::Create()
    [void]$shell.AddScript($script:RenewLoop.ToString()).AddArgument($state).AddArgument(
        $Settings.Clone()).AddArgument($Granted).AddArgument($functions)
    @{ Shell = $shell; Handle = $shell.BeginInvoke(); State = $state }
}

function Stop-BatonRenewal {
    # Stops the renewal loop; returns why the lease was lost, or $null.
    param($Keeper)
    $state = $Keeper.State
    $state.Stop.Set() | Out-Null
    # A renewal in flight may take until its timeout; do not wait for it longer than 2 s.
    if ($Keeper.Handle.AsyncWaitHandle.WaitOne(2000)) {
        try { $Keeper.Shell.EndInvoke($Keeper.Handle) | Out-Null } catch { }
        $Keeper.Shell.Dispose()
    }
    else { [void]$Keeper.Shell.BeginStop($null, $null) }
    if ($state.Lost) { return $state.Lost }
    if ((Get-BatonClock) -ge $state.Deadline) { return 'deadline_exceeded' }
    $null
}

function Invoke-BatonLock {
    <#
    .SYNOPSIS
    Runs a script block while holding a baton lock.

    .DESCRIPTION
    Queues for the lock (FIFO), waits with long-polls until granted, renews the lease in the
    background (every third of the ttl) while the script block runs, and releases it in
    `finally`. The block gets the lease as its first argument (param($lease)): $lease.token is
    the fencing token, $lease.IsLost tells whether the lease is lost by now.

    Throws (the exception's Data['BatonCode'] says why) when the lock is busy and
    -TimeoutSeconds is 0 (busy), when waiting timed out (timed_out), and after the block when
    the lease was lost while it ran (lease_lost, revoked, lease_not_found, deadline_exceeded)
    or the release answered released: false: the block did not run fully protected.

    .EXAMPLE
    Invoke-BatonLock -Name nightly-report -TtlSeconds 60 -ScriptBlock {
        param($lease)
        Publish-Report -FencingToken $lease.token
    }
    #>
    [CmdletBinding()]
    param(
        [Parameter(Mandatory = $true, Position = 0)][string]$Name,
        [Parameter(Mandatory = $true, Position = 1)][scriptblock]$ScriptBlock,
        # Lease time-to-live in seconds; 0 takes the server's default (30 s).
        [int]$TtlSeconds = 0,
        # -1 waits forever; 0 tries once and throws busy; N gives up after N seconds.
        [int]$TimeoutSeconds = -1,
        [string]$Owner = "$([Environment]::MachineName)/$([Environment]::UserName)/$PID",
        # 1 for a mutex, N for a semaphore; 0 keeps the lock's current capacity.
        [int]$Capacity = 0,
        # Default: $env:BATON_URL (comma-separated for fail-over), else http://127.0.0.1:7878.
        [string]$Url,
        # Default: $env:BATON_API_KEY.
        [string]$ApiKey
    )
    $settings = New-BatonSettings $Url $ApiKey
    $granted = Wait-BatonLease $settings $Name $TtlSeconds $TimeoutSeconds $Owner $Capacity
    $keeper = Start-BatonRenewal $settings $granted
    $lease = $granted.Body.lease
    Add-Member -InputObject $lease -MemberType NoteProperty -Name RenewalState -Value $keeper.State
    Add-Member -InputObject $lease -MemberType ScriptProperty -Name IsLost -Value {
        $now = [Diagnostics.Stopwatch]::GetTimestamp() / [double][Diagnostics.Stopwatch]::Frequency
        [bool]$this.RenewalState.Lost -or ($now -ge $this.RenewalState.Deadline)
    }
    $completed = $false
    try {
        & $ScriptBlock $lease
        $completed = $true
    }
    finally {
        $lost = Stop-BatonRenewal $keeper
        $problem = $null
        try {
            $release = (Invoke-BatonHttp $settings 'POST' "/v1/leases/$($lease.id)/release" @{}).Body
            if ((-not $lost) -and (-not $release.released)) {
                $problem = New-BatonError 'lease_lost' ("released: false ($($release.reason)): the lease on " +
                    "'$Name' had ended before the script block finished; it did not run fully protected")
            }
        }
        catch {
            # Not a safety problem: the lease expires by itself, later than it could have.
            Write-Warning "baton: cannot release the lease on '$Name'; it will expire: $($_.Exception.Message)"
        }
        if ($lost) {
            $why = ''
            if ($keeper.State.LastError) { $why = "; last renewal error: $($keeper.State.LastError)" }
            $problem = New-BatonError $lost ("the lease on '$Name' was lost ($lost) while the script " +
                "block ran; it did not run fully protected$why")
        }
        if ($problem) {
            # Never hide the block's own exception behind ours.
            if ($completed) { throw $problem }
            Write-Warning $problem.Message
        }
    }
}

function Get-BatonLock {
    <#
    .SYNOPSIS
    Lists locks (holders with owner and token, waiters in queue order), or one lock by name.
    #>
    [CmdletBinding()]
    param([Parameter(Position = 0)][string]$Name, [string]$Url, [string]$ApiKey)
    $settings = New-BatonSettings $Url $ApiKey
    if ($Name) {
        (Invoke-BatonHttp $settings 'GET' (Get-BatonLockPath $Name)).Body
    }
    else {
        (Invoke-BatonHttp $settings 'GET' '/v1/locks').Body.locks
    }
}

function Get-BatonJob {
    <#
    .SYNOPSIS
    Lists job records (newest first), filtered by name and state, or gets one job by id with
    the tail of its output (property OutputTail).
    #>
    [CmdletBinding()]
    param(
        [Parameter(Position = 0)][string]$Id,
        [string]$Name,
        # One or more of queued, waiting, running, succeeded, failed, cancelled, lost,
        # timed_out, skipped, coalesced.
        [string[]]$State,
        [int]$Limit = 0,
        [string]$Url,
        [string]$ApiKey
    )
    $settings = New-BatonSettings $Url $ApiKey
    if ($Id) {
        $detail = (Invoke-BatonHttp $settings 'GET' ('/v1/jobs/' + [Uri]::EscapeDataString($Id))).Body
        Add-Member -InputObject $detail.job -MemberType NoteProperty -Name OutputTail -Value $detail.output_tail -PassThru
        return
    }
    $query = @()
    if ($Name) { $query += 'name=' + [Uri]::EscapeDataString($Name) }
    if ($State) { $query += 'state=' + [Uri]::EscapeDataString($State -join ',') }
    if ($Limit -gt 0) { $query += "limit=$Limit" }
    $path = '/v1/jobs'
    if ($query.Count -gt 0) { $path = $path + '?' + ($query -join '&') }
    (Invoke-BatonHttp $settings 'GET' $path).Body.jobs
}

Export-ModuleMember -Function Invoke-BatonLock, Get-BatonLock, Get-BatonJob

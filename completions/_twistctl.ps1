
using namespace System.Management.Automation
using namespace System.Management.Automation.Language

Register-ArgumentCompleter -Native -CommandName 'twistctl' -ScriptBlock {
    param($wordToComplete, $commandAst, $cursorPosition)

    $commandElements = $commandAst.CommandElements
    $command = @(
        'twistctl'
        for ($i = 1; $i -lt $commandElements.Count; $i++) {
            $element = $commandElements[$i]
            if ($element -isnot [StringConstantExpressionAst] -or
                $element.StringConstantType -ne [StringConstantType]::BareWord -or
                $element.Value.StartsWith('-') -or
                $element.Value -eq $wordToComplete) {
                break
        }
        $element.Value
    }) -join ';'

    $completions = @(switch ($command) {
        'twistctl' {
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG also works)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG also works)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'No log output (each subcommand''s help says what else -q does there)')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'No log output (each subcommand''s help says what else -q does there)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('timer-demo', 'timer-demo', [CompletionResultType]::ParameterValue, 'The classic callLater tour: print the time at 1, 2 and 3 s, stop at 5 s')
            [CompletionResult]::new('conntest', 'conntest', [CompletionResultType]::ParameterValue, 'Is this port reachable? Exit status tells scripts what happened')
            [CompletionResult]::new('talk-server', 'talk-server', [CompletionResultType]::ParameterValue, 'Line chat, server side: talk with every connected client from this console')
            [CompletionResult]::new('talk-client', 'talk-client', [CompletionResultType]::ParameterValue, 'Line chat, client side: talk with the operator of a talk-server')
            [CompletionResult]::new('completions', 'completions', [CompletionResultType]::ParameterValue, 'Print a shell completion script to stdout')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'twistctl;timer-demo' {
            [CompletionResult]::new('--at', '--at', [CompletionResultType]::ParameterName, 'Moments after start at which to print the time')
            [CompletionResult]::new('--stop-after', '--stop-after', [CompletionResultType]::ParameterName, 'When to stop the reactor')
            [CompletionResult]::new('--every', '--every', [CompletionResultType]::ParameterName, 'Print on a LoopingCall every DUR instead (the first print is at once)')
            [CompletionResult]::new('--count', '--count', [CompletionResultType]::ParameterName, 'With --every: how many times to print before stopping (without it: until --stop-after)')
            [CompletionResult]::new('--utc', '--utc', [CompletionResultType]::ParameterName, 'Print UTC instead of local time')
            [CompletionResult]::new('--precise', '--precise', [CompletionResultType]::ParameterName, 'Print milliseconds and how late each call fired')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'No log output, warnings included; the tour''s own lines still print')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'No log output, warnings included; the tour''s own lines still print')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG also works)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG also works)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'twistctl;conntest' {
            [CompletionResult]::new('--timeout', '--timeout', [CompletionResultType]::ParameterName, 'Give up on one connection attempt, or one name lookup, after DUR (default 10s; with --watch, the --interval)')
            [CompletionResult]::new('--wait', '--wait', [CompletionResultType]::ParameterName, 'Retry down targets every --interval until all are up, or until DUR has passed since the start (then exit 124). Interrupted (Ctrl-C, SIGTERM), it lists the targets still down on stderr')
            [CompletionResult]::new('--interval', '--interval', [CompletionResultType]::ParameterName, 'With --wait: time between retries of a down target (default 500ms). With --watch: time between the starts of two probes of a target (default 1s)')
            [CompletionResult]::new('--count', '--count', [CompletionResultType]::ParameterName, 'With --watch: stop after N probes of each target')
            [CompletionResult]::new('--warning', '--warning', [CompletionResultType]::ParameterName, 'With --nagios: WARNING when the response time (from the start to the verdict: lookup, connect and every check on the connection) is above DUR')
            [CompletionResult]::new('--critical', '--critical', [CompletionResultType]::ParameterName, 'With --nagios: CRITICAL when the response time is above DUR')
            [CompletionResult]::new('--cert-warn-days', '--cert-warn-days', [CompletionResultType]::ParameterName, 'With --nagios and --tls: WARNING when the certificate expires in fewer than N days (--cert-days N is the CRITICAL threshold)')
            [CompletionResult]::new('--concurrency', '--concurrency', [CompletionResultType]::ParameterName, 'At most N connection attempts in flight (never more than the open-file limit allows)')
            [CompletionResult]::new('--starttls', '--starttls', [CompletionResultType]::ParameterName, 'Upgrade a plain-text session to TLS first, then check as --tls: smtp (EHLO, STARTTLS), imap (a001 STARTTLS), pop3 (STLS), ftp (AUTH TLS) or postgres (SSLRequest). A server that refuses fails with what it answered')
            [CompletionResult]::new('--sni', '--sni', [CompletionResultType]::ParameterName, 'The TLS server name to send and verify (default: the host as typed; none is sent for an IP address). A UNIX socket has no host name: there it is needed, unless --insecure is given')
            [CompletionResult]::new('--ca', '--ca', [CompletionResultType]::ParameterName, 'Trust the CA certificates of this PEM file instead of the system''s')
            [CompletionResult]::new('--alpn', '--alpn', [CompletionResultType]::ParameterName, 'Offer these ALPN protocols (h2,http/1.1); the chosen one is reported')
            [CompletionResult]::new('--cert-days', '--cert-days', [CompletionResultType]::ParameterName, 'Fail (cert-expiring, exit 4) when the certificate expires in fewer than N days (default: only an expired one fails). With --nagios: the critical threshold')
            [CompletionResult]::new('--send', '--send', [CompletionResultType]::ParameterName, 'Send STR once connected (after the TLS handshake with --tls). Escapes: \r \n \t \\ \xHH; nothing is appended')
            [CompletionResult]::new('--expect', '--expect', [CompletionResultType]::ParameterName, 'The reply (UTF-8, invalid bytes replaced) must match REGEX within --timeout; without --send, waits for the server''s banner. No match by close, --max-bytes or --timeout: mismatch (exit 4); nothing at all by --timeout: 124')
            [CompletionResult]::new('--max-bytes', '--max-bytes', [CompletionResultType]::ParameterName, 'With --expect: read at most N bytes of the reply [default: 65536]')
            [CompletionResult]::new('--quit', '--quit', [CompletionResultType]::ParameterName, 'Send STR before closing (QUIT\r\n), escapes as for --send')
            [CompletionResult]::new('--watch', '--watch', [CompletionResultType]::ParameterName, 'Probe every target again and again on a fixed grid (--interval), a line per probe, and print loss and latency statistics at the end (Ctrl-C, SIGTERM or --count); Ctrl-\ or Enter prints them so far. A TCP ping')
            [CompletionResult]::new('--timestamps', '--timestamps', [CompletionResultType]::ParameterName, 'With --watch: start each probe line with the local time (12:00:03.412)')
            [CompletionResult]::new('--changes', '--changes', [CompletionResultType]::ParameterName, 'With --watch: print only the lines that say a target went down or came back (and the summary), for logs that run for days')
            [CompletionResult]::new('--any', '--any', [CompletionResultType]::ParameterName, 'Succeed as soon as any one target is up; the others are cancelled (wait for one of these replicas). Only the winner is printed (-v shows the rest); if none is up, every failure is')
            [CompletionResult]::new('--open', '--open', [CompletionResultType]::ParameterName, 'Print only targets that connected (scan mode); the exit status is unchanged')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'One JSON object per target per line on stdout: host, port, addr, status, error, elapsed_ms; with the checks, where they apply: tls_version, cipher, alpn, cert_subject, cert_issuer, cert_sans, cert_not_before, cert_not_after (RFC 3339), cert_days_left, cert_sha256, banner')
            [CompletionResult]::new('--nagios', '--nagios', [CompletionResultType]::ParameterName, 'Print and exit as a check command of Nagios, Icinga, Naemon, Sensu or Checkmk (the Monitoring Plugins guidelines): one line `CONNTEST OK - 127.0.0.1 port 443 open in 0.41 ms, certificate expires in 61 days|time=0.000410s;0.5;1;0; cert_days=61;30;7;;`; with several targets a summary line, then one line per target, the worst state winning. Exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN, usage errors included. States: open (and closed with --closed) is OK unless a threshold says otherwise; refused, timeout, unreachable, error, tls-error, cert-invalid, cert-expiring, starttls-refused, mismatch and still-open are CRITICAL; an unresolved name is UNKNOWN (nothing was checked). Not with --json, --watch, --wait, --any, --open, -q or -- CMD')
            [CompletionResult]::new('--tls', '--tls', [CompletionResultType]::ParameterName, 'After connecting, a TLS handshake: the server''s certificate must verify (system trust store, or --ca) for the host as typed (or --sni). Reports version, cipher, ALPN and the certificate; closes with close_notify')
            [CompletionResult]::new('--insecure', '--insecure', [CompletionResultType]::ParameterName, 'Do not verify the certificate (its details are still reported; --cert-days still applies)')
            [CompletionResult]::new('--closed', '--closed', [CompletionResultType]::ParameterName, 'Invert the check: a target passes when nothing accepts (refused, unreachable, timed out) and fails when it is still open (status still-open, exit 1). With --wait: wait until every target is closed (124 if one is still open at the deadline)')
            [CompletionResult]::new('-4', '-4', [CompletionResultType]::ParameterName, 'Use IPv4 addresses only')
            [CompletionResult]::new('-6', '-6', [CompletionResultType]::ParameterName, 'Use IPv6 addresses only')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print no results and no log output: only the exit status tells (usage errors still print)')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print no results and no log output: only the exit status tells (usage errors still print)')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG also works)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG also works)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'twistctl;talk-server' {
            [CompletionResult]::new('--port', '--port', [CompletionResultType]::ParameterName, 'The port to listen on, as an option (the same as PORT)')
            [CompletionResult]::new('--bind', '--bind', [CompletionResultType]::ParameterName, 'The address to listen on: an IP address (127.0.0.1, ::1 or [::1]) or a name (localhost: every address it resolves to). Default: every IPv4 and IPv6 address')
            [CompletionResult]::new('--max-clients', '--max-clients', [CompletionResultType]::ParameterName, 'At most N clients at once (1 or more); the next one is told the server is full')
            [CompletionResult]::new('--max-line', '--max-line', [CompletionResultType]::ParameterName, 'Longest line accepted from a client, in bytes (1 or more)')
            [CompletionResult]::new('--idle-timeout', '--idle-timeout', [CompletionResultType]::ParameterName, 'Close clients that send nothing for DUR (0: never)')
            [CompletionResult]::new('--cert', '--cert', [CompletionResultType]::ParameterName, 'The PEM certificate chain to present (leaf first) with --tls, and on ssl: and unix:...:tls=1 descriptions without their own; needs --key')
            [CompletionResult]::new('--key', '--key', [CompletionResultType]::ParameterName, 'The PEM private key of --cert')
            [CompletionResult]::new('--cert-dir', '--cert-dir', [CompletionResultType]::ParameterName, 'Keep the self-signed certificate (of --tls, ssl: and unix:...:tls=1) in DIR instead')
            [CompletionResult]::new('--listen', '--listen', [CompletionResultType]::ParameterName, 'Listen where the endpoint description DESC says, too; repeat it to listen on several at once: tcp:8000, tcp:8000:interface=127.0.0.1, unix:/run/talk.sock[:mode=660], unix:@talk (abstract), ssl:8443, ssl:8443:privateKey=KEY:certKey=CERT, unix:/run/talk.sock:tls=1 (TLS over the socket). ssl: and tls=1 without their own files serve the certificate of --tls (--cert/--key, or the kept self-signed one). PORT, --port, --bind and --tls add one listener more (--tls makes that one TLS, not the descriptions); with only --listen there is none. A socket file left by a server that is gone is reused; one a server still accepts on is refused')
            [CompletionResult]::new('--echo', '--echo', [CompletionResultType]::ParameterName, 'No console (stdin is ignored): send every received line back to its sender, until SIGINT or SIGTERM. A client''s end of input closes it once everything it sent (a last line without a newline too) has been echoed. A client that does not read is not read from either')
            [CompletionResult]::new('--raw', '--raw', [CompletionResultType]::ParameterName, 'The classic tutorial''s wire format: no line delimiters')
            [CompletionResult]::new('--tls', '--tls', [CompletionResultType]::ParameterName, 'Serve TLS. Without --cert/--key: a self-signed ECDSA P-256 certificate, made on first use and kept (key mode 0600) in $XDG_STATE_HOME/twistctl (~/.local/state/twistctl), so its fingerprint, printed at start (`TLS certificate SHA256:...`), stays the same across restarts')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'No log output; the chat, its notices and the listening line still print')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'No log output; the chat, its notices and the listening line still print')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG also works)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG also works)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'twistctl;talk-client' {
            [CompletionResult]::new('--timeout', '--timeout', [CompletionResultType]::ParameterName, 'Give up connecting after DUR')
            [CompletionResult]::new('--linger', '--linger', [CompletionResultType]::ParameterName, 'Once this side has stopped sending (bye, or the end of input), wait at most DUR for the server to close, then give up with status 124. Default: 2s after bye, no limit after the end of input')
            [CompletionResult]::new('--ca', '--ca', [CompletionResultType]::ParameterName, 'With --tls: trust the CA certificates of this PEM file instead of the system''s')
            [CompletionResult]::new('--fingerprint', '--fingerprint', [CompletionResultType]::ParameterName, 'With --tls: accept only the server certificate with this SHA-256 fingerprint (as talk-server prints it: SHA256:AB:CD:...); chain and name are not checked')
            [CompletionResult]::new('--sni', '--sni', [CompletionResultType]::ParameterName, 'With --tls: the name to verify the server''s certificate for and send as SNI (default: the host as typed). Over a UNIX socket, which has no host name, it is needed unless --fingerprint or --insecure is given')
            [CompletionResult]::new('--raw', '--raw', [CompletionResultType]::ParameterName, 'The classic tutorial''s wire format: no line delimiters')
            [CompletionResult]::new('--tls', '--tls', [CompletionResultType]::ParameterName, 'Speak TLS. The server''s certificate is verified with the system''s trust store (or --ca, --fingerprint, --insecure). One no authority vouches for can be trusted on first use, at a terminal: it is remembered in $XDG_CONFIG_HOME/twistctl/known_hosts (~/.config/twistctl) and a later different one is refused. Over TLS there is no half-close: at the end of piped input nothing is sent and the server''s close is awaited (see --linger)')
            [CompletionResult]::new('--insecure', '--insecure', [CompletionResultType]::ParameterName, 'With --tls: do not verify the server at all (said on stderr). Anyone on the path could read and change the chat')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'No log output; the conversation and its notices still print')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'No log output; the conversation and its notices still print')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG also works)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG also works)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'twistctl;completions' {
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'No log output; the script still prints')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'No log output; the script still prints')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG also works)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG also works)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'twistctl;help' {
            [CompletionResult]::new('timer-demo', 'timer-demo', [CompletionResultType]::ParameterValue, 'The classic callLater tour: print the time at 1, 2 and 3 s, stop at 5 s')
            [CompletionResult]::new('conntest', 'conntest', [CompletionResultType]::ParameterValue, 'Is this port reachable? Exit status tells scripts what happened')
            [CompletionResult]::new('talk-server', 'talk-server', [CompletionResultType]::ParameterValue, 'Line chat, server side: talk with every connected client from this console')
            [CompletionResult]::new('talk-client', 'talk-client', [CompletionResultType]::ParameterValue, 'Line chat, client side: talk with the operator of a talk-server')
            [CompletionResult]::new('completions', 'completions', [CompletionResultType]::ParameterValue, 'Print a shell completion script to stdout')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'twistctl;help;timer-demo' {
            break
        }
        'twistctl;help;conntest' {
            break
        }
        'twistctl;help;talk-server' {
            break
        }
        'twistctl;help;talk-client' {
            break
        }
        'twistctl;help;completions' {
            break
        }
        'twistctl;help;help' {
            break
        }
    })

    $completions.Where{ $_.CompletionText -like "$wordToComplete*" } |
        Sort-Object -Property ListItemText
}

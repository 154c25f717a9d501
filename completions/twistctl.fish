# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_twistctl_global_optspecs
    string join \n v/verbose q/quiet h/help V/version
end

function __fish_twistctl_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_twistctl_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_twistctl_using_subcommand
    set -l cmd (__fish_twistctl_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c twistctl -n "__fish_twistctl_needs_command" -s v -l verbose -d 'More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG also works)'
complete -c twistctl -n "__fish_twistctl_needs_command" -s q -l quiet -d 'No log output (each subcommand\'s help says what else -q does there)'
complete -c twistctl -n "__fish_twistctl_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c twistctl -n "__fish_twistctl_needs_command" -s V -l version -d 'Print version'
complete -c twistctl -n "__fish_twistctl_needs_command" -f -a "timer-demo" -d 'The classic callLater tour: print the time at 1, 2 and 3 s, stop at 5 s'
complete -c twistctl -n "__fish_twistctl_needs_command" -f -a "conntest" -d 'Is this port reachable? Exit status tells scripts what happened'
complete -c twistctl -n "__fish_twistctl_needs_command" -f -a "talk-server" -d 'Line chat, server side: talk with every connected client from this console'
complete -c twistctl -n "__fish_twistctl_needs_command" -f -a "talk-client" -d 'Line chat, client side: talk with the operator of a talk-server'
complete -c twistctl -n "__fish_twistctl_needs_command" -f -a "completions" -d 'Print a shell completion script to stdout'
complete -c twistctl -n "__fish_twistctl_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c twistctl -n "__fish_twistctl_using_subcommand timer-demo" -l at -d 'Moments after start at which to print the time' -r
complete -c twistctl -n "__fish_twistctl_using_subcommand timer-demo" -l stop-after -d 'When to stop the reactor' -r
complete -c twistctl -n "__fish_twistctl_using_subcommand timer-demo" -l every -d 'Print on a LoopingCall every DUR instead (the first print is at once)' -r
complete -c twistctl -n "__fish_twistctl_using_subcommand timer-demo" -l count -d 'With --every: how many times to print before stopping (without it: until --stop-after)' -r
complete -c twistctl -n "__fish_twistctl_using_subcommand timer-demo" -l utc -d 'Print UTC instead of local time'
complete -c twistctl -n "__fish_twistctl_using_subcommand timer-demo" -l precise -d 'Print milliseconds and how late each call fired'
complete -c twistctl -n "__fish_twistctl_using_subcommand timer-demo" -s q -l quiet -d 'No log output, warnings included; the tour\'s own lines still print'
complete -c twistctl -n "__fish_twistctl_using_subcommand timer-demo" -s v -l verbose -d 'More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG also works)'
complete -c twistctl -n "__fish_twistctl_using_subcommand timer-demo" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c twistctl -n "__fish_twistctl_using_subcommand timer-demo" -s V -l version -d 'Print version'
complete -c twistctl -n "__fish_twistctl_using_subcommand conntest" -l timeout -d 'Give up on one connection attempt, or one name lookup, after DUR (default 10s; with --watch, the --interval)' -r
complete -c twistctl -n "__fish_twistctl_using_subcommand conntest" -l wait -d 'Retry down targets every --interval until all are up, or until DUR has passed since the start (then exit 124). Interrupted (Ctrl-C, SIGTERM), it lists the targets still down on stderr' -r
complete -c twistctl -n "__fish_twistctl_using_subcommand conntest" -l interval -d 'With --wait: time between retries of a down target (default 500ms). With --watch: time between the starts of two probes of a target (default 1s)' -r
complete -c twistctl -n "__fish_twistctl_using_subcommand conntest" -l count -d 'With --watch: stop after N probes of each target' -r
complete -c twistctl -n "__fish_twistctl_using_subcommand conntest" -l warning -d 'With --nagios: WARNING when the response time (from the start to the verdict: lookup, connect and every check on the connection) is above DUR' -r
complete -c twistctl -n "__fish_twistctl_using_subcommand conntest" -l critical -d 'With --nagios: CRITICAL when the response time is above DUR' -r
complete -c twistctl -n "__fish_twistctl_using_subcommand conntest" -l cert-warn-days -d 'With --nagios and --tls: WARNING when the certificate expires in fewer than N days (--cert-days N is the CRITICAL threshold)' -r
complete -c twistctl -n "__fish_twistctl_using_subcommand conntest" -l concurrency -d 'At most N connection attempts in flight (never more than the open-file limit allows)' -r
complete -c twistctl -n "__fish_twistctl_using_subcommand conntest" -l starttls -d 'Upgrade a plain-text session to TLS first, then check as --tls: smtp (EHLO, STARTTLS), imap (a001 STARTTLS), pop3 (STLS), ftp (AUTH TLS) or postgres (SSLRequest). A server that refuses fails with what it answered' -r
complete -c twistctl -n "__fish_twistctl_using_subcommand conntest" -l sni -d 'The TLS server name to send and verify (default: the host as typed; none is sent for an IP address). A UNIX socket has no host name: there it is needed, unless --insecure is given' -r
complete -c twistctl -n "__fish_twistctl_using_subcommand conntest" -l ca -d 'Trust the CA certificates of this PEM file instead of the system\'s' -r -F
complete -c twistctl -n "__fish_twistctl_using_subcommand conntest" -l alpn -d 'Offer these ALPN protocols (h2,http/1.1); the chosen one is reported' -r
complete -c twistctl -n "__fish_twistctl_using_subcommand conntest" -l cert-days -d 'Fail (cert-expiring, exit 4) when the certificate expires in fewer than N days (default: only an expired one fails). With --nagios: the critical threshold' -r
complete -c twistctl -n "__fish_twistctl_using_subcommand conntest" -l send -d 'Send STR once connected (after the TLS handshake with --tls). Escapes: \\r \\n \\t \\\\ \\xHH; nothing is appended' -r
complete -c twistctl -n "__fish_twistctl_using_subcommand conntest" -l expect -d 'The reply (UTF-8, invalid bytes replaced) must match REGEX within --timeout; without --send, waits for the server\'s banner. No match by close, --max-bytes or --timeout: mismatch (exit 4); nothing at all by --timeout: 124' -r
complete -c twistctl -n "__fish_twistctl_using_subcommand conntest" -l max-bytes -d 'With --expect: read at most N bytes of the reply [default: 65536]' -r
complete -c twistctl -n "__fish_twistctl_using_subcommand conntest" -l quit -d 'Send STR before closing (QUIT\\r\\n), escapes as for --send' -r
complete -c twistctl -n "__fish_twistctl_using_subcommand conntest" -l watch -d 'Probe every target again and again on a fixed grid (--interval), a line per probe, and print loss and latency statistics at the end (Ctrl-C, SIGTERM or --count); Ctrl-\\ or Enter prints them so far. A TCP ping'
complete -c twistctl -n "__fish_twistctl_using_subcommand conntest" -l timestamps -d 'With --watch: start each probe line with the local time (12:00:03.412)'
complete -c twistctl -n "__fish_twistctl_using_subcommand conntest" -l changes -d 'With --watch: print only the lines that say a target went down or came back (and the summary), for logs that run for days'
complete -c twistctl -n "__fish_twistctl_using_subcommand conntest" -l any -d 'Succeed as soon as any one target is up; the others are cancelled (wait for one of these replicas). Only the winner is printed (-v shows the rest); if none is up, every failure is'
complete -c twistctl -n "__fish_twistctl_using_subcommand conntest" -l open -d 'Print only targets that connected (scan mode); the exit status is unchanged'
complete -c twistctl -n "__fish_twistctl_using_subcommand conntest" -l json -d 'One JSON object per target per line on stdout: host, port, addr, status, error, elapsed_ms; with the checks, where they apply: tls_version, cipher, alpn, cert_subject, cert_issuer, cert_sans, cert_not_before, cert_not_after (RFC 3339), cert_days_left, cert_sha256, banner'
complete -c twistctl -n "__fish_twistctl_using_subcommand conntest" -l nagios -d 'Print and exit as a check command of Nagios, Icinga, Naemon, Sensu or Checkmk (the Monitoring Plugins guidelines): one line `CONNTEST OK - 127.0.0.1 port 443 open in 0.41 ms, certificate expires in 61 days|time=0.000410s;0.5;1;0; cert_days=61;30;7;;`; with several targets a summary line, then one line per target, the worst state winning. Exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN, usage errors included. States: open (and closed with --closed) is OK unless a threshold says otherwise; refused, timeout, unreachable, error, tls-error, cert-invalid, cert-expiring, starttls-refused, mismatch and still-open are CRITICAL; an unresolved name is UNKNOWN (nothing was checked). Not with --json, --watch, --wait, --any, --open, -q or -- CMD'
complete -c twistctl -n "__fish_twistctl_using_subcommand conntest" -l tls -d 'After connecting, a TLS handshake: the server\'s certificate must verify (system trust store, or --ca) for the host as typed (or --sni). Reports version, cipher, ALPN and the certificate; closes with close_notify'
complete -c twistctl -n "__fish_twistctl_using_subcommand conntest" -l insecure -d 'Do not verify the certificate (its details are still reported; --cert-days still applies)'
complete -c twistctl -n "__fish_twistctl_using_subcommand conntest" -l closed -d 'Invert the check: a target passes when nothing accepts (refused, unreachable, timed out) and fails when it is still open (status still-open, exit 1). With --wait: wait until every target is closed (124 if one is still open at the deadline)'
complete -c twistctl -n "__fish_twistctl_using_subcommand conntest" -s 4 -d 'Use IPv4 addresses only'
complete -c twistctl -n "__fish_twistctl_using_subcommand conntest" -s 6 -d 'Use IPv6 addresses only'
complete -c twistctl -n "__fish_twistctl_using_subcommand conntest" -s q -l quiet -d 'Print no results and no log output: only the exit status tells (usage errors still print)'
complete -c twistctl -n "__fish_twistctl_using_subcommand conntest" -s v -l verbose -d 'More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG also works)'
complete -c twistctl -n "__fish_twistctl_using_subcommand conntest" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c twistctl -n "__fish_twistctl_using_subcommand conntest" -s V -l version -d 'Print version'
complete -c twistctl -n "__fish_twistctl_using_subcommand talk-server" -l port -d 'The port to listen on, as an option (the same as PORT)' -r
complete -c twistctl -n "__fish_twistctl_using_subcommand talk-server" -l bind -d 'The address to listen on: an IP address (127.0.0.1, ::1 or [::1]) or a name (localhost: every address it resolves to). Default: every IPv4 and IPv6 address' -r
complete -c twistctl -n "__fish_twistctl_using_subcommand talk-server" -l max-clients -d 'At most N clients at once (1 or more); the next one is told the server is full' -r
complete -c twistctl -n "__fish_twistctl_using_subcommand talk-server" -l max-line -d 'Longest line accepted from a client, in bytes (1 or more)' -r
complete -c twistctl -n "__fish_twistctl_using_subcommand talk-server" -l idle-timeout -d 'Close clients that send nothing for DUR (0: never)' -r
complete -c twistctl -n "__fish_twistctl_using_subcommand talk-server" -l cert -d 'The PEM certificate chain to present (leaf first) with --tls, and on ssl: and unix:...:tls=1 descriptions without their own; needs --key' -r -F
complete -c twistctl -n "__fish_twistctl_using_subcommand talk-server" -l key -d 'The PEM private key of --cert' -r -F
complete -c twistctl -n "__fish_twistctl_using_subcommand talk-server" -l cert-dir -d 'Keep the self-signed certificate (of --tls, ssl: and unix:...:tls=1) in DIR instead' -r -F
complete -c twistctl -n "__fish_twistctl_using_subcommand talk-server" -l listen -d 'Listen where the endpoint description DESC says, too; repeat it to listen on several at once: tcp:8000, tcp:8000:interface=127.0.0.1, unix:/run/talk.sock[:mode=660], unix:@talk (abstract), ssl:8443, ssl:8443:privateKey=KEY:certKey=CERT, unix:/run/talk.sock:tls=1 (TLS over the socket). ssl: and tls=1 without their own files serve the certificate of --tls (--cert/--key, or the kept self-signed one). PORT, --port, --bind and --tls add one listener more (--tls makes that one TLS, not the descriptions); with only --listen there is none. A socket file left by a server that is gone is reused; one a server still accepts on is refused' -r
complete -c twistctl -n "__fish_twistctl_using_subcommand talk-server" -l echo -d 'No console (stdin is ignored): send every received line back to its sender, until SIGINT or SIGTERM. A client\'s end of input closes it once everything it sent (a last line without a newline too) has been echoed. A client that does not read is not read from either'
complete -c twistctl -n "__fish_twistctl_using_subcommand talk-server" -l raw -d 'The classic tutorial\'s wire format: no line delimiters'
complete -c twistctl -n "__fish_twistctl_using_subcommand talk-server" -l tls -d 'Serve TLS. Without --cert/--key: a self-signed ECDSA P-256 certificate, made on first use and kept (key mode 0600) in $XDG_STATE_HOME/twistctl (~/.local/state/twistctl), so its fingerprint, printed at start (`TLS certificate SHA256:...`), stays the same across restarts'
complete -c twistctl -n "__fish_twistctl_using_subcommand talk-server" -s q -l quiet -d 'No log output; the chat, its notices and the listening line still print'
complete -c twistctl -n "__fish_twistctl_using_subcommand talk-server" -s v -l verbose -d 'More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG also works)'
complete -c twistctl -n "__fish_twistctl_using_subcommand talk-server" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c twistctl -n "__fish_twistctl_using_subcommand talk-server" -s V -l version -d 'Print version'
complete -c twistctl -n "__fish_twistctl_using_subcommand talk-client" -l timeout -d 'Give up connecting after DUR' -r
complete -c twistctl -n "__fish_twistctl_using_subcommand talk-client" -l linger -d 'Once this side has stopped sending (bye, or the end of input), wait at most DUR for the server to close, then give up with status 124. Default: 2s after bye, no limit after the end of input' -r
complete -c twistctl -n "__fish_twistctl_using_subcommand talk-client" -l ca -d 'With --tls: trust the CA certificates of this PEM file instead of the system\'s' -r -F
complete -c twistctl -n "__fish_twistctl_using_subcommand talk-client" -l fingerprint -d 'With --tls: accept only the server certificate with this SHA-256 fingerprint (as talk-server prints it: SHA256:AB:CD:...); chain and name are not checked' -r
complete -c twistctl -n "__fish_twistctl_using_subcommand talk-client" -l sni -d 'With --tls: the name to verify the server\'s certificate for and send as SNI (default: the host as typed). Over a UNIX socket, which has no host name, it is needed unless --fingerprint or --insecure is given' -r
complete -c twistctl -n "__fish_twistctl_using_subcommand talk-client" -l raw -d 'The classic tutorial\'s wire format: no line delimiters'
complete -c twistctl -n "__fish_twistctl_using_subcommand talk-client" -l tls -d 'Speak TLS. The server\'s certificate is verified with the system\'s trust store (or --ca, --fingerprint, --insecure). One no authority vouches for can be trusted on first use, at a terminal: it is remembered in $XDG_CONFIG_HOME/twistctl/known_hosts (~/.config/twistctl) and a later different one is refused. Over TLS there is no half-close: at the end of piped input nothing is sent and the server\'s close is awaited (see --linger)'
complete -c twistctl -n "__fish_twistctl_using_subcommand talk-client" -l insecure -d 'With --tls: do not verify the server at all (said on stderr). Anyone on the path could read and change the chat'
complete -c twistctl -n "__fish_twistctl_using_subcommand talk-client" -s q -l quiet -d 'No log output; the conversation and its notices still print'
complete -c twistctl -n "__fish_twistctl_using_subcommand talk-client" -s v -l verbose -d 'More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG also works)'
complete -c twistctl -n "__fish_twistctl_using_subcommand talk-client" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c twistctl -n "__fish_twistctl_using_subcommand talk-client" -s V -l version -d 'Print version'
complete -c twistctl -n "__fish_twistctl_using_subcommand completions" -s q -l quiet -d 'No log output; the script still prints'
complete -c twistctl -n "__fish_twistctl_using_subcommand completions" -s v -l verbose -d 'More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG also works)'
complete -c twistctl -n "__fish_twistctl_using_subcommand completions" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c twistctl -n "__fish_twistctl_using_subcommand completions" -s V -l version -d 'Print version'
complete -c twistctl -n "__fish_twistctl_using_subcommand help; and not __fish_seen_subcommand_from timer-demo conntest talk-server talk-client completions help" -f -a "timer-demo" -d 'The classic callLater tour: print the time at 1, 2 and 3 s, stop at 5 s'
complete -c twistctl -n "__fish_twistctl_using_subcommand help; and not __fish_seen_subcommand_from timer-demo conntest talk-server talk-client completions help" -f -a "conntest" -d 'Is this port reachable? Exit status tells scripts what happened'
complete -c twistctl -n "__fish_twistctl_using_subcommand help; and not __fish_seen_subcommand_from timer-demo conntest talk-server talk-client completions help" -f -a "talk-server" -d 'Line chat, server side: talk with every connected client from this console'
complete -c twistctl -n "__fish_twistctl_using_subcommand help; and not __fish_seen_subcommand_from timer-demo conntest talk-server talk-client completions help" -f -a "talk-client" -d 'Line chat, client side: talk with the operator of a talk-server'
complete -c twistctl -n "__fish_twistctl_using_subcommand help; and not __fish_seen_subcommand_from timer-demo conntest talk-server talk-client completions help" -f -a "completions" -d 'Print a shell completion script to stdout'
complete -c twistctl -n "__fish_twistctl_using_subcommand help; and not __fish_seen_subcommand_from timer-demo conntest talk-server talk-client completions help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'

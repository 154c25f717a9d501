
use builtin;
use str;

set edit:completion:arg-completer[twistctl] = {|@words|
    fn spaces {|n|
        builtin:repeat $n ' ' | str:join ''
    }
    fn cand {|text desc|
        edit:complex-candidate $text &display=$text' '(spaces (- 14 (wcswidth $text)))$desc
    }
    var command = 'twistctl'
    for word $words[1..-1] {
        if (str:has-prefix $word '-') {
            break
        }
        set command = $command';'$word
    }
    var completions = [
        &'twistctl'= {
            cand -v 'More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG also works)'
            cand --verbose 'More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG also works)'
            cand -q 'No log output (each subcommand''s help says what else -q does there)'
            cand --quiet 'No log output (each subcommand''s help says what else -q does there)'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
            cand timer-demo 'The classic callLater tour: print the time at 1, 2 and 3 s, stop at 5 s'
            cand conntest 'Is this port reachable? Exit status tells scripts what happened'
            cand talk-server 'Line chat, server side: talk with every connected client from this console'
            cand talk-client 'Line chat, client side: talk with the operator of a talk-server'
            cand completions 'Print a shell completion script to stdout'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'twistctl;timer-demo'= {
            cand --at 'Moments after start at which to print the time'
            cand --stop-after 'When to stop the reactor'
            cand --every 'Print on a LoopingCall every DUR instead (the first print is at once)'
            cand --count 'With --every: how many times to print before stopping (without it: until --stop-after)'
            cand --utc 'Print UTC instead of local time'
            cand --precise 'Print milliseconds and how late each call fired'
            cand -q 'No log output, warnings included; the tour''s own lines still print'
            cand --quiet 'No log output, warnings included; the tour''s own lines still print'
            cand -v 'More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG also works)'
            cand --verbose 'More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG also works)'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'twistctl;conntest'= {
            cand --timeout 'Give up on one connection attempt, or one name lookup, after DUR (default 10s; with --watch, the --interval)'
            cand --wait 'Retry down targets every --interval until all are up, or until DUR has passed since the start (then exit 124). Interrupted (Ctrl-C, SIGTERM), it lists the targets still down on stderr'
            cand --interval 'With --wait: time between retries of a down target (default 500ms). With --watch: time between the starts of two probes of a target (default 1s)'
            cand --count 'With --watch: stop after N probes of each target'
            cand --warning 'With --nagios: WARNING when the response time (from the start to the verdict: lookup, connect and every check on the connection) is above DUR'
            cand --critical 'With --nagios: CRITICAL when the response time is above DUR'
            cand --cert-warn-days 'With --nagios and --tls: WARNING when the certificate expires in fewer than N days (--cert-days N is the CRITICAL threshold)'
            cand --concurrency 'At most N connection attempts in flight (never more than the open-file limit allows)'
            cand --starttls 'Upgrade a plain-text session to TLS first, then check as --tls: smtp (EHLO, STARTTLS), imap (a001 STARTTLS), pop3 (STLS), ftp (AUTH TLS) or postgres (SSLRequest). A server that refuses fails with what it answered'
            cand --sni 'The TLS server name to send and verify (default: the host as typed; none is sent for an IP address). A UNIX socket has no host name: there it is needed, unless --insecure is given'
            cand --ca 'Trust the CA certificates of this PEM file instead of the system''s'
            cand --alpn 'Offer these ALPN protocols (h2,http/1.1); the chosen one is reported'
            cand --cert-days 'Fail (cert-expiring, exit 4) when the certificate expires in fewer than N days (default: only an expired one fails). With --nagios: the critical threshold'
            cand --send 'Send STR once connected (after the TLS handshake with --tls). Escapes: \r \n \t \\ \xHH; nothing is appended'
            cand --expect 'The reply (UTF-8, invalid bytes replaced) must match REGEX within --timeout; without --send, waits for the server''s banner. No match by close, --max-bytes or --timeout: mismatch (exit 4); nothing at all by --timeout: 124'
            cand --max-bytes 'With --expect: read at most N bytes of the reply [default: 65536]'
            cand --quit 'Send STR before closing (QUIT\r\n), escapes as for --send'
            cand --watch 'Probe every target again and again on a fixed grid (--interval), a line per probe, and print loss and latency statistics at the end (Ctrl-C, SIGTERM or --count); Ctrl-\ or Enter prints them so far. A TCP ping'
            cand --timestamps 'With --watch: start each probe line with the local time (12:00:03.412)'
            cand --changes 'With --watch: print only the lines that say a target went down or came back (and the summary), for logs that run for days'
            cand --any 'Succeed as soon as any one target is up; the others are cancelled (wait for one of these replicas). Only the winner is printed (-v shows the rest); if none is up, every failure is'
            cand --open 'Print only targets that connected (scan mode); the exit status is unchanged'
            cand --json 'One JSON object per target per line on stdout: host, port, addr, status, error, elapsed_ms; with the checks, where they apply: tls_version, cipher, alpn, cert_subject, cert_issuer, cert_sans, cert_not_before, cert_not_after (RFC 3339), cert_days_left, cert_sha256, banner'
            cand --nagios 'Print and exit as a check command of Nagios, Icinga, Naemon, Sensu or Checkmk (the Monitoring Plugins guidelines): one line `CONNTEST OK - 127.0.0.1 port 443 open in 0.41 ms, certificate expires in 61 days|time=0.000410s;0.5;1;0; cert_days=61;30;7;;`; with several targets a summary line, then one line per target, the worst state winning. Exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN, usage errors included. States: open (and closed with --closed) is OK unless a threshold says otherwise; refused, timeout, unreachable, error, tls-error, cert-invalid, cert-expiring, starttls-refused, mismatch and still-open are CRITICAL; an unresolved name is UNKNOWN (nothing was checked). Not with --json, --watch, --wait, --any, --open, -q or -- CMD'
            cand --tls 'After connecting, a TLS handshake: the server''s certificate must verify (system trust store, or --ca) for the host as typed (or --sni). Reports version, cipher, ALPN and the certificate; closes with close_notify'
            cand --insecure 'Do not verify the certificate (its details are still reported; --cert-days still applies)'
            cand --closed 'Invert the check: a target passes when nothing accepts (refused, unreachable, timed out) and fails when it is still open (status still-open, exit 1). With --wait: wait until every target is closed (124 if one is still open at the deadline)'
            cand -4 'Use IPv4 addresses only'
            cand -6 'Use IPv6 addresses only'
            cand -q 'Print no results and no log output: only the exit status tells (usage errors still print)'
            cand --quiet 'Print no results and no log output: only the exit status tells (usage errors still print)'
            cand -v 'More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG also works)'
            cand --verbose 'More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG also works)'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'twistctl;talk-server'= {
            cand --port 'The port to listen on, as an option (the same as PORT)'
            cand --bind 'The address to listen on: an IP address (127.0.0.1, ::1 or [::1]) or a name (localhost: every address it resolves to). Default: every IPv4 and IPv6 address'
            cand --max-clients 'At most N clients at once (1 or more); the next one is told the server is full'
            cand --max-line 'Longest line accepted from a client, in bytes (1 or more)'
            cand --idle-timeout 'Close clients that send nothing for DUR (0: never)'
            cand --cert 'The PEM certificate chain to present (leaf first) with --tls, and on ssl: and unix:...:tls=1 descriptions without their own; needs --key'
            cand --key 'The PEM private key of --cert'
            cand --cert-dir 'Keep the self-signed certificate (of --tls, ssl: and unix:...:tls=1) in DIR instead'
            cand --listen 'Listen where the endpoint description DESC says, too; repeat it to listen on several at once: tcp:8000, tcp:8000:interface=127.0.0.1, unix:/run/talk.sock[:mode=660], unix:@talk (abstract), ssl:8443, ssl:8443:privateKey=KEY:certKey=CERT, unix:/run/talk.sock:tls=1 (TLS over the socket). ssl: and tls=1 without their own files serve the certificate of --tls (--cert/--key, or the kept self-signed one). PORT, --port, --bind and --tls add one listener more (--tls makes that one TLS, not the descriptions); with only --listen there is none. A socket file left by a server that is gone is reused; one a server still accepts on is refused'
            cand --echo 'No console (stdin is ignored): send every received line back to its sender, until SIGINT or SIGTERM. A client''s end of input closes it once everything it sent (a last line without a newline too) has been echoed. A client that does not read is not read from either'
            cand --raw 'The classic tutorial''s wire format: no line delimiters'
            cand --tls 'Serve TLS. Without --cert/--key: a self-signed ECDSA P-256 certificate, made on first use and kept (key mode 0600) in $XDG_STATE_HOME/twistctl (~/.local/state/twistctl), so its fingerprint, printed at start (`TLS certificate SHA256:...`), stays the same across restarts'
            cand -q 'No log output; the chat, its notices and the listening line still print'
            cand --quiet 'No log output; the chat, its notices and the listening line still print'
            cand -v 'More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG also works)'
            cand --verbose 'More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG also works)'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'twistctl;talk-client'= {
            cand --timeout 'Give up connecting after DUR'
            cand --linger 'Once this side has stopped sending (bye, or the end of input), wait at most DUR for the server to close, then give up with status 124. Default: 2s after bye, no limit after the end of input'
            cand --ca 'With --tls: trust the CA certificates of this PEM file instead of the system''s'
            cand --fingerprint 'With --tls: accept only the server certificate with this SHA-256 fingerprint (as talk-server prints it: SHA256:AB:CD:...); chain and name are not checked'
            cand --sni 'With --tls: the name to verify the server''s certificate for and send as SNI (default: the host as typed). Over a UNIX socket, which has no host name, it is needed unless --fingerprint or --insecure is given'
            cand --raw 'The classic tutorial''s wire format: no line delimiters'
            cand --tls 'Speak TLS. The server''s certificate is verified with the system''s trust store (or --ca, --fingerprint, --insecure). One no authority vouches for can be trusted on first use, at a terminal: it is remembered in $XDG_CONFIG_HOME/twistctl/known_hosts (~/.config/twistctl) and a later different one is refused. Over TLS there is no half-close: at the end of piped input nothing is sent and the server''s close is awaited (see --linger)'
            cand --insecure 'With --tls: do not verify the server at all (said on stderr). Anyone on the path could read and change the chat'
            cand -q 'No log output; the conversation and its notices still print'
            cand --quiet 'No log output; the conversation and its notices still print'
            cand -v 'More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG also works)'
            cand --verbose 'More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG also works)'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'twistctl;completions'= {
            cand -q 'No log output; the script still prints'
            cand --quiet 'No log output; the script still prints'
            cand -v 'More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG also works)'
            cand --verbose 'More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG also works)'
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'twistctl;help'= {
            cand timer-demo 'The classic callLater tour: print the time at 1, 2 and 3 s, stop at 5 s'
            cand conntest 'Is this port reachable? Exit status tells scripts what happened'
            cand talk-server 'Line chat, server side: talk with every connected client from this console'
            cand talk-client 'Line chat, client side: talk with the operator of a talk-server'
            cand completions 'Print a shell completion script to stdout'
            cand help 'Print this message or the help of the given subcommand(s)'
        }
        &'twistctl;help;timer-demo'= {
        }
        &'twistctl;help;conntest'= {
        }
        &'twistctl;help;talk-server'= {
        }
        &'twistctl;help;talk-client'= {
        }
        &'twistctl;help;completions'= {
        }
        &'twistctl;help;help'= {
        }
    ]
    $completions[$command]
}

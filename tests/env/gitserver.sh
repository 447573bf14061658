#!/usr/bin/env bash
# Real git servers on loopback for Capstan's tests and demos:
#   * smart HTTP: lighttpd + `git http-backend` (anonymous /git/, basic-auth /auth/, bearer-token
#     /token/, and /moved/, a redirect to another host)
#   * SSH:        a private OpenSSH sshd with its own host key, client key and known_hosts
# Everything (config, keys, logs, pids, repositories) lives in one directory, so parallel
# test binaries can each run their own servers without sharing state.
# Run `tests/env/gitserver.sh help` for the interface.
set -euo pipefail

PROG=${0##*/}
# Absolute path of this script: the --watch-pid reaper re-invokes it later from another cwd.
SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)/${BASH_SOURCE[0]##*/}"
# shellcheck source=lib.sh
source "${SELF%/*}/lib.sh"

HTTP_USER=capstan
# Seconds each server gets to start answering; overridable for very slow machines.
TIMEOUT=${GITSERVER_TIMEOUT:-15}
# How many fresh ports to try when a server loses the race for the one we picked.
PORT_ATTEMPTS=5

# A caller running us from inside a git hook or worktree must not redirect our git commands.
unset GIT_DIR GIT_WORK_TREE GIT_INDEX_FILE GIT_OBJECT_DIRECTORY GIT_COMMON_DIR GIT_NAMESPACE

usage() {
    cat <<EOF
Usage:
  $PROG up DIR [--watch-pid PID]
      Start lighttpd (smart HTTP) and sshd on free 127.0.0.1 ports, serving the bare
      repositories in DIR/repos/NAME.git. Creates DIR if needed. Prints shell 'export'
      lines (also written to DIR/env) on stdout; progress goes to stderr.
      Fails if servers recorded in DIR are still running ('down' first); a stopped DIR
      can be brought up again (repos are kept; keys, password and ports are new).
      --watch-pid PID: a detached reaper runs '$PROG down DIR' once PID has exited.
  $PROG install
      Install lighttpd and OpenSSH from Debian's packages when missing.
  $PROG down DIR
      Stop the servers (and reaper) recorded in DIR. Succeeds if nothing is running.
      Leaves DIR and its files in place; the caller removes DIR.
  $PROG env DIR
      Print DIR/env (the export lines written by 'up').
  $PROG create-repo DIR NAME [SRC_DIR]
      Create the bare repository DIR/repos/NAME.git (default branch main, pushes over
      HTTP allowed). With SRC_DIR, commit its files as one commit "initial" and push it
      to main. Prints the repository path. Works whether or not the servers are up.

Exported by 'up' (DIR is made absolute):
  GIT_HTTP_URL=http://127.0.0.1:PORT/git        anonymous fetch and push: \$GIT_HTTP_URL/NAME.git
  GIT_HTTP_AUTH_URL=http://127.0.0.1:PORT/auth  basic auth required for fetch and push
  GIT_HTTPS_URL=https://127.0.0.1:TLSPORT/git   anonymous, over TLS with a certificate signed by
  GIT_HTTPS_CA=DIR/tls/ca.crt                    this private CA
  GIT_HTTP_USER=$HTTP_USER  GIT_HTTP_PASSWORD=...  (password also in DIR/http-password)
  GIT_HTTP_PORT=PORT
  GIT_HTTP_TOKEN_URL=http://127.0.0.1:PORT/token   needs "Authorization: Bearer \$GIT_HTTP_TOKEN"
  GIT_HTTP_TOKEN=...                             (also in DIR/http-token)
  GIT_HTTP_MOVED_URL=http://127.0.0.1:PORT/moved   redirects to http://127.0.0.2:PORT/git, another
                                                 host to a client (the access log shows the Host
                                                 and Authorization headers of each request)
  GIT_SSH_URL=ssh://USER@127.0.0.1:SSHPORT       repo URL: \$GIT_SSH_URL\$GIT_SSH_REPO_ROOT/NAME.git
  GIT_SSH_REPO_ROOT=DIR/repos  GIT_SSH_PORT  GIT_SSH_USER
  GIT_SSH_KEY=DIR/id_ed25519  GIT_SSH_KNOWN_HOSTS=DIR/known_hosts
  GIT_REPO_ROOT=DIR/repos  GIT_SERVER_DIR=DIR

  GIT_HTTP_POD_URL=http://ADDR:PORT/git         only with GITSERVER_POD_ADDRESS=ADDR: the same
                                                 anonymous repositories on ADDR too (the node's IP,
                                                 which Pods reach; see tests/env/node.sh)

Logs: DIR/lighttpd-error.log, DIR/lighttpd-access.log, DIR/sshd.log, DIR/reaper.log.
Environment: GITSERVER_TIMEOUT (seconds per server to come up, default 15),
GITSERVER_POD_ADDRESS (an address of this machine to serve plain HTTP on as well).
EOF
}

# Response status line and headers (CR stripped) for GET PATH, or nothing. Uses bash's
# /dev/tcp so that curl is not required.
http_head() {
    # shellcheck disable=SC2016 # expanded by the inner bash
    timeout 3 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" "$2" >&3
        while IFS= read -r line <&3; do
            line=${line%$'\''\r'\''}
            [ -z "$line" ] && break
            printf "%s\n" "$line"
        done' _ "$1" "$2" 2>/dev/null || true
}

# ---------------------------------------------------------------- packages

# lighttpd lives in /usr/sbin, which a non-root caller's PATH may lack.
LIGHTTPD=
find_lighttpd() {
    LIGHTTPD=$(command -v lighttpd 2>/dev/null) || LIGHTTPD=
    [[ -n $LIGHTTPD || ! -x /usr/sbin/lighttpd ]] || LIGHTTPD=/usr/sbin/lighttpd
    [[ -n $LIGHTTPD ]]
}

ensure_packages() {
    local missing=()
    find_lighttpd || missing+=(lighttpd)
    [[ -e /usr/lib/lighttpd/mod_openssl.so ]] || missing+=(mod_openssl)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    [[ -x /usr/sbin/sshd ]] || missing+=(/usr/sbin/sshd)
    command -v ssh >/dev/null 2>&1 || missing+=(ssh)
    command -v ssh-keygen >/dev/null 2>&1 || missing+=(ssh-keygen)
    # Tests sign commits and tags the way people do: gpg, and ssh-keygen -Y sign.
    command -v gpg >/dev/null 2>&1 || missing+=(gpg)
    ((${#missing[@]})) || return 0
    [[ $(id -u) == 0 ]] || die "missing ${missing[*]}; install lighttpd, lighttpd-mod-openssl, openssl, openssh-server, openssh-client and gnupg (needs root)"
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and apt-get is not available to install them"
    log "installing lighttpd lighttpd-mod-openssl openssl openssh-server openssh-client gnupg (missing: ${missing[*]})"
    local pkgs=(lighttpd lighttpd-mod-openssl openssl openssh-server openssh-client gnupg)
    # apt output goes to stderr: stdout is reserved for the export lines.
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${pkgs[@]}" >&2; then
        # Usually a stale or missing package index on a fresh machine.
        log "install failed; running apt-get update and retrying"
        apt-get update >&2 || die "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${pkgs[@]}" >&2 ||
            die "apt-get install ${pkgs[*]} failed"
    fi
    if ! find_lighttpd || [[ ! -x /usr/sbin/sshd ]]; then
        die "lighttpd or /usr/sbin/sshd still missing after installing ${pkgs[*]}"
    fi
}

# ---------------------------------------------------------------- up

# State of the `up` in progress, used by its EXIT trap to undo a partial start.
UP_DIR=
UP_DONE=0
STARTED=()

up_cleanup() {
    local rc=$?
    ((UP_DONE)) && return 0
    if ((${#STARTED[@]})); then
        log "up failed; stopping what it started (pids ${STARTED[*]})"
        stop_pids "${STARTED[@]}"
        wait 2>/dev/null || true
    fi
    [[ -n $UP_DIR ]] && rm -f "$UP_DIR/env"
    exit $((rc ? rc : 1))
}

write_lighttpd_conf() {
    local dir=$1 port=$2 tls_port=$3 token=$4 backend
    backend="$(git --exec-path)/git-http-backend"
    [[ -x $backend ]] || die "git http-backend not found at $backend"
    cat >"$dir/lighttpd.conf" <<EOF
# Generated by $PROG up; rewritten on every start.
# mod_auth must come before mod_cgi so auth is decided before the CGI runs.
server.modules = ( "mod_access", "mod_alias", "mod_redirect", "mod_setenv", "mod_auth",
                   "mod_authn_file", "mod_cgi", "mod_accesslog", "mod_openssl" )
server.bind = "127.0.0.1"
server.port = $port
# Another host to a client: everything /moved/ on 127.0.0.1 redirects to /git/ here.
\$SERVER["socket"] == "127.0.0.2:$port" { }
$(if [[ -n ${GITSERVER_POD_ADDRESS:-} ]]; then
        echo "# Pods on the test node reach this address (GITSERVER_POD_ADDRESS)."
        echo "\$SERVER[\"socket\"] == \"$GITSERVER_POD_ADDRESS:$port\" { }"
    fi)
# The same repositories over HTTPS, with a certificate from the private CA in $dir/tls/ca.crt.
\$SERVER["socket"] == "127.0.0.1:$tls_port" {
    ssl.engine = "enable"
    ssl.pemfile = "$dir/tls/server.crt"
    ssl.privkey = "$dir/tls/server.key"
}
server.document-root = "$dir/www"
server.errorlog = "$dir/lighttpd-error.log"
accesslog.filename = "$dir/lighttpd-access.log"
# The default format (%V is the Host header), then what the Authorization header held.
accesslog.format = "%h %V %u %t \\"%r\\" %>s %b \\"%{Referer}i\\" \\"%{User-Agent}i\\" authorization=\\"%{Authorization}i\\""
# Request bodies (pushes) are spooled here rather than in /var/tmp.
server.upload-dirs = ( "$dir/tmp" )

# The prefixes map onto the same backend and the same GIT_PROJECT_ROOT; lighttpd passes the
# rest of the URL (/NAME.git/info/refs, ...) to the CGI as PATH_INFO.
alias.url = ( "/git/"  => "$backend/",
              "/auth/" => "$backend/",
              "/token/" => "$backend/" )
\$HTTP["url"] =~ "^/(git|auth|token)/" {
    cgi.assign = ( "" => "" )
    setenv.add-environment = ( "GIT_PROJECT_ROOT" => "$dir/repos",
                               "GIT_HTTP_EXPORT_ALL" => "1" )
}

# Everything under /auth/ (fetch and push alike) needs user $HTTP_USER; mod_auth sets
# REMOTE_USER for git http-backend.
auth.backend = "plain"
auth.backend.plain.userfile = "$dir/lighttpd-users"
auth.require = ( "/auth/" => ( "method" => "basic", "realm" => "capstan-git",
                               "require" => "valid-user" ) )

# Everything under /token/ needs "Authorization: Bearer <token>" (403 otherwise).
\$HTTP["url"] =~ "^/token/" {
    \$REQUEST_HEADER["Authorization"] != "Bearer $token" {
        url.access-deny = ( "" )
    }
}

# On 127.0.0.1 (over https too, which makes it a redirect down to http), /moved/ points at the
# same repository on another host.
\$HTTP["host"] =~ "^127[.]0[.]0[.]1(:|\$)" {
    url.redirect = ( "^/moved/(.*)\$" => "http://127.0.0.2:$port/git/\$1" )
    url.redirect-code = 302
}
EOF
}

# A private CA and a certificate it signs for 127.0.0.1, for the HTTPS listener.
make_tls() {
    local tls=$1
    mkdir -p "$tls"
    (
        cd "$tls"
        umask 077
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
            -subj /CN=capstan-git-test-ca -keyout ca.key -out ca.crt 2>/dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -subj /CN=127.0.0.1 -keyout server.key -out server.csr 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' >server.ext
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
            -extfile server.ext -out server.crt 2>/dev/null
    ) || die "creating the test CA and server certificate with openssl failed"
    chmod 644 "$tls/ca.crt"
}

write_sshd_config() {
    local dir=$1 port=$2
    cat >"$dir/sshd_config" <<EOF
# Generated by $PROG up; rewritten on every start. Deliberately does not include
# /etc/ssh/sshd_config, so the machine's own sshd settings cannot interfere.
Port $port
ListenAddress 127.0.0.1
HostKey $dir/ssh_host_ed25519_key
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
# DIR is often under a world-writable /tmp, which StrictModes would reject.
StrictModes no
UsePAM no
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowTcpForwarding no
# Parallel test clones must not be dropped by the default 10:30:100 startup throttling.
MaxStartups 100
LoginGraceTime 30
LogLevel INFO
EOF
}

# Wait for lighttpd (pid $2, port $3). Returns 0 when git http-backend answers on /git/ and
# /auth/ demands credentials, 2 if the port was taken, 1 on any other failure.
wait_http() {
    local dir=$1 pid=$2 port=$3 logoff=$4 deadline head
    deadline=$((SECONDS + TIMEOUT))
    while ((SECONDS < deadline)); do
        if ! is_alive "$pid"; then
            wait "$pid" 2>/dev/null || true
            if grep -q 'Address already in use' <<<"$(tail -c "+$((logoff + 1))" "$dir/lighttpd-error.log")"; then
                return 2
            fi
            log "lighttpd exited during startup"
            return 1
        fi
        head=$(http_head "$port" "/git/")
        if [[ $head == HTTP/* ]]; then
            # git http-backend marks all its responses uncacheable with this date; lighttpd's
            # own 404 (CGI not run) does not.
            if [[ $head != *"Expires: Fri, 01 Jan 1980"* ]]; then
                log "lighttpd answers on port $port but git http-backend did not run for /git/; response:"
                printf '%s\n' "$head" >&2
                return 1
            fi
            head=$(http_head "$port" "/auth/")
            if [[ ${head%%$'\n'*} != *" 401 "* ]]; then
                log "lighttpd on port $port does not require authentication for /auth/; response:"
                printf '%s\n' "$head" >&2
                return 1
            fi
            return 0
        fi
        sleep 0.1
    done
    log "lighttpd did not answer on 127.0.0.1:$port within ${TIMEOUT}s"
    return 1
}

# Wait for sshd (pid $2, port $3): TCP, then the host key it presents, then a real key login
# that can find git-upload-pack. Returns 0 ok, 2 port taken, 1 other failure.
wait_ssh() {
    local dir=$1 pid=$2 port=$3 logoff=$4 user=$5 deadline scanned want out
    deadline=$((SECONDS + TIMEOUT))
    want=$(cut -d' ' -f1,2 "$dir/ssh_host_ed25519_key.pub")
    while ((SECONDS < deadline)); do
        if ! is_alive "$pid"; then
            wait "$pid" 2>/dev/null || true
            if grep -q 'Address already in use' <<<"$(tail -c "+$((logoff + 1))" "$dir/sshd.log")"; then
                return 2
            fi
            log "sshd exited during startup"
            return 1
        fi
        if tcp_open "$port"; then
            scanned=$(ssh-keyscan -T 3 -t ed25519 -p "$port" 127.0.0.1 2>/dev/null | grep -v '^#' | cut -d' ' -f2,3 || true)
            if [[ -n $scanned ]]; then
                if [[ $scanned != "$want" ]]; then
                    log "the ssh server on 127.0.0.1:$port presents a different host key than $dir/ssh_host_ed25519_key"
                    return 1
                fi
                if ! out=$(ssh -F /dev/null -p "$port" -i "$dir/id_ed25519" -o IdentitiesOnly=yes \
                    -o BatchMode=yes -o ConnectTimeout=5 -o StrictHostKeyChecking=yes \
                    -o UserKnownHostsFile="$dir/known_hosts" -o LogLevel=ERROR \
                    "$user@127.0.0.1" 'command -v git-upload-pack && command -v git-receive-pack' 2>&1 </dev/null); then
                    log "ssh login as $user with $dir/id_ed25519, or finding git-upload-pack/git-receive-pack on the server's PATH, failed:"
                    printf '%s\n' "$out" >&2
                    return 1
                fi
                return 0
            fi
        fi
        sleep 0.1
    done
    log "sshd did not answer on 127.0.0.1:$port within ${TIMEOUT}s"
    return 1
}

cmd_up() {
    local dir_arg='' watch_pid=
    while (($#)); do
        case $1 in
            --watch-pid)
                (($# >= 2)) || usage_error "--watch-pid needs a PID"
                watch_pid=$2
                shift 2
                ;;
            --watch-pid=*)
                watch_pid=${1#*=}
                shift
                ;;
            -*) usage_error "up: unknown option '$1'" ;;
            *)
                [[ -z $dir_arg ]] || usage_error "up: unexpected argument '$1'"
                dir_arg=$1
                shift
                ;;
        esac
    done
    [[ -n $dir_arg ]] || usage_error "up: DIR is required"
    if [[ -n $watch_pid ]]; then
        [[ $watch_pid =~ ^[0-9]+$ ]] || usage_error "--watch-pid: '$watch_pid' is not a pid"
        is_alive "$watch_pid" || die "--watch-pid $watch_pid: no such process (it would be torn down at once)"
    fi

    ensure_packages
    command -v git >/dev/null 2>&1 || die "git is not installed"

    mkdir -p "$dir_arg" || die "cannot create $dir_arg"
    local dir
    dir=$(abs_dir "$dir_arg")
    check_path_chars "$dir"

    local running
    running=$(recorded_pids "$dir" | tr '\n' ' ')
    [[ -z $running ]] || die "servers for $dir are already running (pids ${running% }); run '$PROG down $dir' first"

    UP_DIR=$dir
    trap up_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    mkdir -p "$dir/repos" "$dir/www" "$dir/tmp"
    rm -f "$dir/pids" "$dir/reaper.pid" "$dir/env" "$dir/sshd.pid"
    : >"$dir/pids"
    : >"$dir/lighttpd-error.log"
    : >"$dir/sshd.log"
    # sshd refuses to start without its privilege separation directory.
    mkdir -p /run/sshd 2>/dev/null || log "warning: cannot create /run/sshd; sshd may refuse to start"

    local user
    user=$(id -un)

    # Fresh credentials on every start; hex keeps them safe inside URLs and the config.
    local password token
    password=$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')
    token=$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')
    [[ ${#password} == 36 && ${#token} == 36 ]] || die "could not generate a password and a token"
    (
        umask 077
        printf '%s' "$password" >"$dir/http-password"
        printf '%s' "$token" >"$dir/http-token"
        printf '%s:%s\n' "$HTTP_USER" "$password" >"$dir/lighttpd-users"
    )

    rm -f "$dir/ssh_host_ed25519_key" "$dir/ssh_host_ed25519_key.pub" "$dir/id_ed25519" "$dir/id_ed25519.pub"
    ssh-keygen -q -N '' -t ed25519 -C "capstan-gitserver-host" -f "$dir/ssh_host_ed25519_key" </dev/null ||
        die "ssh-keygen (host key) failed"
    ssh-keygen -q -N '' -t ed25519 -C "capstan-gitserver-client" -f "$dir/id_ed25519" </dev/null ||
        die "ssh-keygen (client key) failed"
    (umask 077 && cp "$dir/id_ed25519.pub" "$dir/authorized_keys")

    # ---- lighttpd
    make_tls "$dir/tls"
    local http_port='' https_port='' pid rc logoff out
    for _ in $(seq "$PORT_ATTEMPTS"); do
        http_port=$(free_port)
        https_port=$(free_port)
        [[ $https_port != "$http_port" ]] || continue
        write_lighttpd_conf "$dir" "$http_port" "$https_port" "$token"
        # -tt loads the modules too, so a missing mod_cgi/mod_auth is reported clearly here.
        out=$("$LIGHTTPD" -tt -f "$dir/lighttpd.conf" 2>&1) ||
            die "lighttpd rejects $dir/lighttpd.conf (are mod_cgi, mod_auth, mod_authn_file, mod_alias, mod_setenv installed?):
$out"
        logoff=$(size_of "$dir/lighttpd-error.log")
        # Daemons get no terminal fds of ours: a caller capturing our output must see EOF.
        "$LIGHTTPD" -D -f "$dir/lighttpd.conf" </dev/null >>"$dir/lighttpd-error.log" 2>&1 &
        pid=$!
        STARTED+=("$pid")
        echo "$pid" >>"$dir/pids"
        rc=0
        wait_http "$dir" "$pid" "$http_port" "$logoff" || rc=$?
        ((rc == 0)) && break
        if ((rc == 2)); then
            log "HTTP port $http_port was taken; retrying with another port"
            continue
        fi
        log_tail "$dir/lighttpd-error.log" "$logoff"
        die "HTTP server (lighttpd) failed to start"
    done
    ((rc == 0)) || { log_tail "$dir/lighttpd-error.log" "$logoff"; die "HTTP server (lighttpd): no usable port after $PORT_ATTEMPTS attempts"; }
    log "lighttpd (pid $pid) serving http://127.0.0.1:$http_port/git and /auth"

    # ---- sshd
    local ssh_port=''
    for _ in $(seq "$PORT_ATTEMPTS"); do
        ssh_port=$(free_port)
        write_sshd_config "$dir" "$ssh_port"
        printf '[127.0.0.1]:%s %s\n' "$ssh_port" "$(cut -d' ' -f1,2 "$dir/ssh_host_ed25519_key.pub")" >"$dir/known_hosts"
        out=$(/usr/sbin/sshd -t -f "$dir/sshd_config" 2>&1) || die "sshd rejects $dir/sshd_config:
$out"
        logoff=$(size_of "$dir/sshd.log")
        # sshd insists on being started by absolute path (it re-executes itself).
        /usr/sbin/sshd -D -e -f "$dir/sshd_config" </dev/null >>"$dir/sshd.log" 2>&1 &
        pid=$!
        STARTED+=("$pid")
        echo "$pid" >>"$dir/pids"
        rc=0
        wait_ssh "$dir" "$pid" "$ssh_port" "$logoff" "$user" || rc=$?
        ((rc == 0)) && break
        if ((rc == 2)); then
            log "SSH port $ssh_port was taken; retrying with another port"
            continue
        fi
        log_tail "$dir/sshd.log" "$logoff"
        die "SSH server (sshd) failed to start"
    done
    ((rc == 0)) || { log_tail "$dir/sshd.log" "$logoff"; die "SSH server (sshd): no usable port after $PORT_ATTEMPTS attempts"; }
    log "sshd (pid $pid) serving ssh://$user@127.0.0.1:$ssh_port"

    # ---- env file (written atomically so a reader never sees half of it)
    {
        local kv
        for kv in \
            "GIT_HTTP_URL=http://127.0.0.1:$http_port/git" \
            "GIT_HTTP_AUTH_URL=http://127.0.0.1:$http_port/auth" \
            "GIT_HTTP_USER=$HTTP_USER" \
            "GIT_HTTP_PASSWORD=$password" \
            "GIT_HTTP_PORT=$http_port" \
            "GIT_HTTP_TOKEN_URL=http://127.0.0.1:$http_port/token" \
            "GIT_HTTP_TOKEN=$token" \
            "GIT_HTTP_MOVED_URL=http://127.0.0.1:$http_port/moved" \
            ${GITSERVER_POD_ADDRESS:+"GIT_HTTP_POD_URL=http://$GITSERVER_POD_ADDRESS:$http_port/git"} \
            "GIT_HTTPS_URL=https://127.0.0.1:$https_port/git" \
            "GIT_HTTPS_CA=$dir/tls/ca.crt" \
            "GIT_SSH_URL=ssh://$user@127.0.0.1:$ssh_port" \
            "GIT_SSH_REPO_ROOT=$dir/repos" \
            "GIT_SSH_PORT=$ssh_port" \
            "GIT_SSH_USER=$user" \
            "GIT_SSH_KEY=$dir/id_ed25519" \
            "GIT_SSH_KNOWN_HOSTS=$dir/known_hosts" \
            "GIT_REPO_ROOT=$dir/repos" \
            "GIT_SERVER_DIR=$dir"; do
            printf 'export %s=%s\n' "${kv%%=*}" "$(shquote "${kv#*=}")"
        done
    } >"$dir/env.tmp"
    mv -f "$dir/env.tmp" "$dir/env"

    # ---- reaper: tears the servers down when the watched process (e.g. a test binary) exits.
    if [[ -n $watch_pid ]]; then
        start_reaper "$dir" "$watch_pid" "$SELF"
        log "reaper (pid $!) will run 'down' when pid $watch_pid exits"
    fi

    UP_DONE=1
    trap - EXIT INT TERM
    cat "$dir/env"
}

# ---------------------------------------------------------------- down / env

cmd_down() {
    (($# == 1)) || usage_error "down: expected exactly DIR"
    down_recorded "$1" "the git servers"
}


# ---------------------------------------------------------------- create-repo

CR_TMP=
cr_cleanup() { [[ -z $CR_TMP ]] || rm -rf "$CR_TMP"; }

cmd_create_repo() {
    (($# == 2 || $# == 3)) || usage_error "create-repo: expected DIR NAME [SRC_DIR]"
    local dir_arg=$1 name=${2%.git} src=${3:-}
    # NAME may be nested (team/app) but must stay inside DIR/repos.
    [[ $name =~ ^[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*$ && $name != *..* ]] ||
        usage_error "create-repo: invalid repository name '$2' (letters, digits, . _ - and / only)"
    if [[ -n $src ]]; then
        [[ -d $src ]] || die "create-repo: source directory '$src' does not exist"
        src=$(abs_dir "$src")
    fi
    command -v git >/dev/null 2>&1 || die "git is not installed"

    mkdir -p "$dir_arg/repos" || die "cannot create $dir_arg/repos"
    local dir repo
    dir=$(abs_dir "$dir_arg")
    repo=$dir/repos/$name.git

    if [[ -e $repo ]]; then
        [[ $(git --git-dir="$repo" rev-parse --is-bare-repository 2>/dev/null) == true ]] ||
            die "create-repo: $repo exists and is not a bare git repository"
        log "$repo already exists"
    else
        mkdir -p "$(dirname "$repo")"
        git init -q --bare -b main "$repo" >&2
    fi
    # Pushes over HTTP: git http-backend otherwise only allows receive-pack with REMOTE_USER set.
    git --git-dir="$repo" config http.receivepack true

    if [[ -n $src ]]; then
        if git --git-dir="$repo" rev-parse -q --verify refs/heads/main >/dev/null; then
            die "create-repo: $repo already has a main branch; refusing to overwrite it with $src"
        fi
        trap cr_cleanup EXIT
        CR_TMP=$(mktemp -d "${TMPDIR:-/tmp}/capstan-gitserver.XXXXXX")
        local work=$CR_TMP/work
        git clone -q "$repo" "$work" 2>/dev/null || git clone -q "$repo" "$work" >&2
        # Copy everything except SRC's own .git (copying it would replace the clone's).
        tar -C "$src" --exclude=./.git -cf - . | tar -C "$work" -xf -
        local -a g=(git -C "$work" -c user.name=capstan-test -c user.email=test@capstan.dev
            -c commit.gpgsign=false -c core.hooksPath=/dev/null)
        "${g[@]}" add -A
        "${g[@]}" commit -q --allow-empty -m initial
        "${g[@]}" push -q origin HEAD:refs/heads/main >&2
    fi
    echo "$repo"
}

# ---------------------------------------------------------------- main

(($#)) || usage_error "missing command"
cmd=$1
shift
case $cmd in
    install) (($# == 0)) || usage_error "install takes no arguments"; ensure_packages ;;
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    env) cmd_env "$@" ;;
    create-repo) cmd_create_repo "$@" ;;
    help | -h | --help) usage ;;
    *) usage_error "unknown command '$cmd'" ;;
esac

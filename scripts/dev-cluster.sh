#!/usr/bin/env bash
# A local Kubernetes control plane for tests and for trying the operator: a real
# kube-apiserver and etcd on loopback ports under a throw-away directory, with a
# generated CA, serving certificate, service-account signing key, an admin
# kubeconfig and an audit log of every request. Nothing runs a kubelet: pods are
# never started, Deployments and other objects are just stored.
#
#   scripts/dev-cluster.sh up        start (or reuse) the control plane, print its env
#   scripts/dev-cluster.sh env       print `export KUBECONFIG=...` of the running one
#   scripts/dev-cluster.sh down      stop it and remove its directory
#   scripts/dev-cluster.sh restart-apiserver [--down SECONDS]
#                                    stop kube-apiserver, keep it down SECONDS, start it
#                                    again (same port and etcd: the objects survive)
#   scripts/dev-cluster.sh up --foreground
#                                    run in the foreground until SIGTERM/SIGINT (the test
#                                    support uses this; `up` runs it in the background)
#
# Directory: $ARCHIVER_DEV_CLUSTER_DIR, default ${TMPDIR:-/tmp}/archiver-dev-cluster-$UID.
# Files there: kubeconfig, audit.log, apiserver.log, etcd.log, pki/, etcd/.
# Binaries: scripts/kube-binaries.sh (KUBEBUILDER_ASSETS, a cache, or a Go build).
#
# The kube-apiserver flags are those controller-runtime's envtest gives it
# (pkg/internal/testing/controlplane), plus the Node,RBAC authorizer and an audit
# policy that logs every request at Metadata level, and the admission plugin that
# checks the right to set blockOwnerDeletion (as OpenShift and hardened clusters
# enable it); the endpoint reconciler is off
# (it refuses a loopback advertise address, and no Service needs endpoints here).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
dir=${ARCHIVER_DEV_CLUSTER_DIR:-${TMPDIR:-/tmp}/archiver-dev-cluster-$(id -u)}
# Bounds: nothing waits forever.
READY_TIMEOUT=${ARCHIVER_DEV_CLUSTER_READY_TIMEOUT:-180}
STOP_TIMEOUT=5

log() { echo "dev-cluster: $*" >&2; }

print_env() {
    echo "export KUBECONFIG=$dir/kubeconfig"
}

supervisor_alive() {
    [ -f "$dir/supervisor.pid" ] && kill -0 "$(cat "$dir/supervisor.pid")" 2>/dev/null
}

# A loopback port nothing listens on (below the ephemeral range, so a client's
# own source port cannot squat it).
free_port() {
    local port attempt
    for attempt in $(seq 1 200); do
        port=$((20000 + RANDOM % 12000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    log "no free loopback port found"
    return 1
}

# CA, serving certificate (loopback and the in-cluster names), an admin client
# certificate in system:masters, and the service-account signing key. Short-lived:
# this is a throw-away cluster.
make_pki() {
    local pki=$dir/pki
    mkdir -p "$pki"
    (
        cd "$pki"
        umask 077
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout ca.key -out ca.crt -days 7 -subj "/CN=archiver-dev-cluster-ca" 2>/dev/null
        cat >serving.ext <<'EOF'
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, IP:10.0.0.1, DNS:localhost, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local
EOF
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout serving.key -out serving.csr -subj "/CN=kube-apiserver" 2>/dev/null
        openssl x509 -req -in serving.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
            -out serving.crt -days 7 -extfile serving.ext 2>/dev/null
        cat >client.ext <<'EOF'
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
EOF
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout admin.key -out admin.csr -subj "/O=system:masters/CN=archiver-dev-admin" 2>/dev/null
        openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
            -out admin.crt -days 7 -extfile client.ext 2>/dev/null
        openssl genrsa -out service-account.key 2048 2>/dev/null
        openssl rsa -in service-account.key -pubout -out service-account.pub 2>/dev/null
        rm -f ./*.csr
    )
}

write_audit_policy() {
    cat >"$dir/audit-policy.yaml" <<'EOF'
apiVersion: audit.k8s.io/v1
kind: Policy
# Every request, with who made it, the verb, the resource and the response code
# (no bodies): what the tests read to check least privilege and quiet steady state.
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
EOF
}

write_kubeconfig() {
    local port=$1
    cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: archiver-dev
    cluster:
      server: https://127.0.0.1:$port
      certificate-authority: $dir/pki/ca.crt
users:
  - name: archiver-dev-admin
    user:
      client-certificate: $dir/pki/admin.crt
      client-key: $dir/pki/admin.key
contexts:
  - name: archiver-dev
    context:
      cluster: archiver-dev
      user: archiver-dev-admin
      namespace: default
current-context: archiver-dev
EOF
}

# Runs etcd and kube-apiserver as children until a signal (or one of them) ends
# it; both die with this shell even if it is killed (parent-death signal).
foreground() {
    local bin
    bin=$("$here/kube-binaries.sh")
    rm -rf "$dir"
    mkdir -p "$dir"
    echo $$ >"$dir/supervisor.pid"
    make_pki
    write_audit_policy
    local etcd_port peer_port api_port
    etcd_port=$(free_port)
    peer_port=$(free_port)
    api_port=$(free_port)
    while [ "$peer_port" = "$etcd_port" ]; do peer_port=$(free_port); done
    while [ "$api_port" = "$etcd_port" ] || [ "$api_port" = "$peer_port" ]; do api_port=$(free_port); done

    etcd_pid="" api_pid=""
    stop_children() {
        trap - TERM INT EXIT
        local pid waited=0
        for pid in $api_pid $etcd_pid; do kill -TERM "$pid" 2>/dev/null || true; done
        while [ $waited -lt $((STOP_TIMEOUT * 10)) ]; do
            local alive=0
            for pid in $api_pid $etcd_pid; do kill -0 "$pid" 2>/dev/null && alive=1; done
            [ $alive -eq 0 ] && break
            sleep 0.1
            waited=$((waited + 1))
        done
        for pid in $api_pid $etcd_pid; do kill -KILL "$pid" 2>/dev/null || true; done
        rm -f "$dir/ready" "$dir/supervisor.pid"
    }
    trap 'stop_children; exit 0' TERM INT
    trap 'stop_children' EXIT

    setpriv --pdeathsig KILL "$bin/etcd" \
        --name default \
        --data-dir "$dir/etcd" \
        --listen-client-urls "http://127.0.0.1:$etcd_port" \
        --advertise-client-urls "http://127.0.0.1:$etcd_port" \
        --listen-peer-urls "http://127.0.0.1:$peer_port" \
        --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
        --initial-cluster "default=http://127.0.0.1:$peer_port" \
        --unsafe-no-fsync \
        --log-level warn \
        >"$dir/etcd.log" 2>&1 &
    etcd_pid=$!

    start_apiserver() {
        setpriv --pdeathsig KILL "$bin/kube-apiserver" \
            --advertise-address 127.0.0.1 \
            --endpoint-reconciler-type none \
            --bind-address 127.0.0.1 \
            --secure-port "$api_port" \
            --cert-dir "$dir/pki" \
            --tls-cert-file "$dir/pki/serving.crt" \
            --tls-private-key-file "$dir/pki/serving.key" \
            --client-ca-file "$dir/pki/ca.crt" \
            --etcd-servers "http://127.0.0.1:$etcd_port" \
            --service-cluster-ip-range 10.0.0.0/24 \
            --allow-privileged=true \
            --disable-admission-plugins ServiceAccount \
            --enable-admission-plugins OwnerReferencesPermissionEnforcement \
            --authorization-mode Node,RBAC \
            --service-account-issuer "https://127.0.0.1:$api_port/" \
            --service-account-key-file "$dir/pki/service-account.pub" \
            --service-account-signing-key-file "$dir/pki/service-account.key" \
            --audit-policy-file "$dir/audit-policy.yaml" \
            --audit-log-path "$dir/audit.log" \
            --audit-log-maxsize 0 \
            >>"$dir/apiserver.log" 2>&1 &
        api_pid=$!
        echo "$api_pid" >"$dir/apiserver.pid"
    }
    # Until /readyz answers; exits when a process dies or the bound passes.
    wait_until_ready() {
        local deadline=$((SECONDS + READY_TIMEOUT))
        until "$bin/kubectl" --kubeconfig "$dir/kubeconfig" get --raw /readyz --request-timeout=5s >/dev/null 2>&1; do
            if ! kill -0 "$api_pid" 2>/dev/null || ! kill -0 "$etcd_pid" 2>/dev/null; then
                log "the control plane exited while starting; last lines of its logs:"
                tail -n 20 "$dir/etcd.log" "$dir/apiserver.log" >&2
                exit 1
            fi
            if [ $SECONDS -ge $deadline ]; then
                log "kube-apiserver not ready within $READY_TIMEOUT s; last lines of its log:"
                tail -n 20 "$dir/apiserver.log" >&2
                exit 1
            fi
            sleep 0.5
        done
    }
    # restart-apiserver: stop kube-apiserver (SIGTERM, then SIGKILL after
    # STOP_TIMEOUT), keep it down for the seconds in $dir/restart-down, start
    # it again with the same flags, port and etcd (the objects survive).
    restart_apiserver() {
        local down waited=0
        down=$(cat "$dir/restart-down" 2>/dev/null || echo 0)
        rm -f "$dir/ready" "$dir/restart-down"
        log "restarting kube-apiserver (down for $down s)"
        kill -TERM "$api_pid" 2>/dev/null || true
        while kill -0 "$api_pid" 2>/dev/null && [ $waited -lt $((STOP_TIMEOUT * 10)) ]; do
            sleep 0.1
            waited=$((waited + 1))
        done
        kill -KILL "$api_pid" 2>/dev/null || true
        wait "$api_pid" 2>/dev/null || true
        sleep "$down"
        start_apiserver
        wait_until_ready
        touch "$dir/ready"
        log "kube-apiserver restarted"
    }

    start_apiserver
    echo "$etcd_pid" >"$dir/etcd.pid"
    write_kubeconfig "$api_port"
    ln -sf "$bin/kubectl" "$dir/kubectl"

    wait_until_ready
    touch "$dir/ready"
    log "ready: kube-apiserver on https://127.0.0.1:$api_port (etcd on 127.0.0.1:$etcd_port); $dir"
    print_env
    # Ends when either process does (or on a signal, through the trap);
    # SIGUSR1 (from `restart-apiserver`) interrupts the wait to restart
    # kube-apiserver.
    restart_requested=0
    trap 'restart_requested=1' USR1
    while true; do
        wait -n "$etcd_pid" "$api_pid" || true
        if [ "$restart_requested" = 1 ]; then
            restart_requested=0
            restart_apiserver
            continue
        fi
        break
    done
    log "a control-plane process exited; stopping"
    exit 1
}

# Stops kube-apiserver of the running control plane, keeps it down for
# SECONDS (default 0), starts it again (same port, certificates and etcd),
# and returns once it is ready again.
restart() {
    local down=0
    if [ "${1:-}" = "--down" ]; then down=${2:?"--down needs SECONDS"}; fi
    case "$down" in '' | *[!0-9]*) log "--down takes whole seconds, not '$down'"; return 2 ;; esac
    if ! supervisor_alive || [ ! -f "$dir/ready" ]; then
        log "no ready control plane in $dir; run: $0 up"
        return 1
    fi
    echo "$down" >"$dir/restart-down"
    kill -USR1 "$(cat "$dir/supervisor.pid")"
    local deadline=$((SECONDS + 10))
    while [ -f "$dir/ready" ]; do
        if [ $SECONDS -ge $deadline ]; then log "the supervisor did not take the restart"; return 1; fi
        sleep 0.1
    done
    deadline=$((SECONDS + down + READY_TIMEOUT + STOP_TIMEOUT))
    until [ -f "$dir/ready" ]; do
        if ! supervisor_alive; then log "the control plane stopped during the restart"; return 1; fi
        if [ $SECONDS -ge $deadline ]; then log "kube-apiserver not ready again within the bound"; return 1; fi
        sleep 0.2
    done
    log "kube-apiserver restarted"
}

up() {
    if supervisor_alive && [ -f "$dir/ready" ]; then
        print_env
        return 0
    fi
    if supervisor_alive; then
        log "a control plane is starting or broken in $dir; run: $0 down"
        return 1
    fi
    # Build (or find) the binaries first, in the foreground, so progress shows.
    "$here/kube-binaries.sh" >/dev/null
    mkdir -p "$(dirname "$dir")"
    local start_log=${dir}.start.log
    setsid "$0" up --foreground >"$start_log" 2>&1 </dev/null &
    local deadline=$((SECONDS + READY_TIMEOUT + 10))
    until [ -f "$dir/ready" ]; do
        if ! kill -0 $! 2>/dev/null; then
            log "the control plane did not start:"
            cat "$start_log" >&2
            return 1
        fi
        if [ $SECONDS -ge $deadline ]; then
            log "not ready within $READY_TIMEOUT s"
            cat "$start_log" >&2
            down
            return 1
        fi
        sleep 0.5
    done
    log "up; logs and audit log in $dir"
    print_env
}

down() {
    local pid name
    if [ -f "$dir/supervisor.pid" ]; then
        pid=$(cat "$dir/supervisor.pid")
        kill -TERM "$pid" 2>/dev/null || true
        local waited=0
        while kill -0 "$pid" 2>/dev/null && [ $waited -lt $(((STOP_TIMEOUT + 5) * 10)) ]; do
            sleep 0.1
            waited=$((waited + 1))
        done
    fi
    # Whatever is left (a supervisor killed with SIGKILL leaves nothing thanks to
    # the parent-death signal, but be sure).
    for name in apiserver etcd supervisor; do
        if [ -f "$dir/$name.pid" ]; then
            pid=$(cat "$dir/$name.pid")
            # Only a process of this control plane (a stale pid may be reused).
            if tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -e "$dir" -e dev-cluster.sh; then
                kill -KILL "$pid" 2>/dev/null || true
            fi
        fi
    done
    rm -rf "$dir" "${dir}.start.log"
}

case "${1:-}" in
up)
    if [ "${2:-}" = "--foreground" ]; then
        foreground
    else
        up
    fi
    ;;
env)
    if supervisor_alive && [ -f "$dir/ready" ]; then
        print_env
    else
        log "no control plane is running in $dir; run: $0 up"
        exit 1
    fi
    ;;
down) down ;;
restart-apiserver) restart "${@:2}" ;;
*)
    echo "usage: $0 up [--foreground] | env | down | restart-apiserver [--down SECONDS]" >&2
    exit 2
    ;;
esac

//! The service as shipped: `config/mqttsn-gateway.service` and the
//! `config/gateway.toml` it points at, run the way systemd runs them. In a
//! private mount and network namespace (`unshare`), the real binary is at
//! the unit's ExecStart path and the shipped config at /etc/mqttsn; the
//! whole system is read-only except the state directory /var/lib/mqttsn
//! (ProtectSystem=strict, StateDirectory=), /tmp is private (PrivateTmp=),
//! the working directory is / and the user is an unprivileged one. The
//! gateway must start, carry a sensor's message to the embedded broker,
//! keep a persistent session in its store under the state directory, and
//! stop cleanly on SIGTERM. Needs root (scripts/test runs as root); without
//! it the test fails under `MQTTSN_REQUIRE_TOOLS=1` and is skipped
//! otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use mqttsn_tests::gateway::{gateway_binary, tools_binary};

/// An unprivileged uid and gid that own nothing on the host.
const SERVICE_ID: u32 = 64_123;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The value of `key=` in the unit's [Service] section.
fn unit_value<'a>(unit: &'a str, key: &str) -> Option<&'a str> {
    unit.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=')).map(str::trim)
}

#[test]
fn the_unit_checks_out_with_systemd_analyze() {
    // systemd's own check of the unit's syntax and directives, with the
    // ExecStart binary pointed at this build's gateway.
    let unit = std::fs::read_to_string(repo().join("config/mqttsn-gateway.service")).unwrap();
    let exec = unit_value(&unit, "ExecStart").unwrap();
    let binary = exec.split_whitespace().next().unwrap();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("unit-verify");
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("mqttsn-gateway.service");
    std::fs::write(&copy, unit.replace(binary, gateway_binary().to_str().unwrap())).unwrap();
    let out =
        Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&copy).output().expect(
            "systemd-analyze (Debian package systemd) is required; scripts/test installs it",
        );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "systemd-analyze verify: {err}");
}

#[test]
fn the_service_starts_as_shipped_with_only_its_state_directory_writable() {
    if !is_root() {
        assert!(
            std::env::var_os("MQTTSN_REQUIRE_TOOLS").is_none(),
            "this test needs root (a mount namespace and an unprivileged user)"
        );
        eprintln!("skipped: needs root");
        return;
    }
    let unit = std::fs::read_to_string(repo().join("config/mqttsn-gateway.service")).unwrap();
    let exec = unit_value(&unit, "ExecStart").expect("ExecStart");
    let binary_path = exec.split_whitespace().next().unwrap().to_owned();
    assert_eq!(unit_value(&unit, "StateDirectory"), Some("mqttsn"));
    assert_eq!(unit_value(&unit, "ProtectSystem"), Some("strict"));
    assert_eq!(unit_value(&unit, "PrivateTmp"), Some("true"));
    assert_eq!(unit_value(&unit, "User"), Some("mqttsn"));
    assert_eq!(
        unit_value(&unit, "WorkingDirectory"),
        None,
        "systemd's default, /, is what is tested"
    );
    let env = unit_value(&unit, "Environment").unwrap_or("");
    let config = exec
        .split_whitespace()
        .skip_while(|a| *a != "--config")
        .nth(1)
        .expect("ExecStart names its --config");
    assert_eq!(config, "/etc/mqttsn/gateway.toml");

    // Scratch: overlay upper layers that put the binary and the shipped
    // config where the unit expects them, and the state directory.
    let s =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("service-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&s);
    let bin_rel = binary_path.strip_prefix("/usr/local/").expect("ExecStart under /usr/local");
    let up = |d: &str| s.join(format!("{d}-up"));
    std::fs::create_dir_all(up("usr-local").join(Path::new(bin_rel).parent().unwrap())).unwrap();
    std::fs::copy(gateway_binary(), up("usr-local").join(bin_rel)).unwrap();
    std::fs::create_dir_all(up("etc").join("mqttsn")).unwrap();
    std::fs::copy(repo().join("config/gateway.toml"), up("etc").join("mqttsn/gateway.toml"))
        .unwrap();
    let state = s.join("state");
    std::fs::create_dir_all(&state).unwrap();
    for d in ["etc", "usr-local", "var-lib"] {
        std::fs::create_dir_all(up(d)).unwrap();
        std::fs::create_dir_all(s.join(format!("{d}-work"))).unwrap();
    }
    let tools = tools_binary();
    let script = format!(
        r#"set -euo pipefail
S={s}
ip link set lo up
# The binary and the config where the unit has them; /var/lib to make the
# state directory in.
for d in etc usr/local var/lib; do
    n=${{d//\//-}}
    mount -t overlay overlay -o lowerdir=/$d,upperdir=$S/$n-up,workdir=$S/$n-work /$d
done
# StateDirectory=mqttsn: /var/lib/mqttsn, owned by the service's user.
mkdir /var/lib/mqttsn
mount --bind $S/state /var/lib/mqttsn
chown {id}:{id} /var/lib/mqttsn
chmod 0750 /var/lib/mqttsn
# ProtectSystem=strict: everything else read-only.
for m in / /etc /usr/local /var/lib; do mount -o remount,bind,ro $m; done
# PrivateTmp=true.
mount -t tmpfs tmpfs /tmp
cd /
test ! -w /etc && test ! -w /usr/local/bin
env -i PATH=/usr/bin:/bin {env} setpriv --reuid={id} --regid={id} --clear-groups --no-new-privs \
    -- {exec} >/tmp/gateway.log 2>&1 &
GW=$!
for i in $(seq 200); do
    grep -q "listening on" /tmp/gateway.log && break
    if ! kill -0 $GW 2>/dev/null; then echo "GATEWAY EXITED"; cat /tmp/gateway.log; exit 1; fi
    sleep 0.05
done
grep -q "listening on" /tmp/gateway.log || {{ echo "GATEWAY NOT LISTENING"; cat /tmp/gateway.log; exit 1; }}
# A sensor (the shipped config: UDP 1884, embedded broker on 1883).
mosquitto_sub -h 127.0.0.1 -p 1883 -t 'service/#' -v -C 1 -W 15 >/tmp/sub.out &
SUB=$!
for i in $(seq 50); do
    {tools} pub -t service/temp -m 21.5 -q 1
    kill -0 $SUB 2>/dev/null || break
    sleep 0.2
done
wait $SUB
echo "BROKER GOT: $(cat /tmp/sub.out)"
# A persistent sensor: its session goes to the store.
{tools} sub -c -i service-sensor -t service/cmd -q 1 -E
kill -TERM $GW
set +e
wait $GW
echo "GATEWAY EXIT: $?"
set -e
echo "--- gateway log"
cat /tmp/gateway.log
echo "--- state"
stat -c '%u:%g %a %s %n' /var/lib/mqttsn /var/lib/mqttsn/*
"#,
        s = s.display(),
        id = SERVICE_ID,
        env = env,
        exec = exec,
        tools = tools.display(),
    );
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--net",
            "--propagation",
            "private",
            "--fork",
            "--",
            "bash",
            "-c",
            &script,
        ])
        .output()
        .expect("unshare (util-linux) is required");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("BROKER GOT: service/temp 21.5"), "{text}");
    assert!(text.contains("GATEWAY EXIT: 0"), "{text}");
    assert!(!text.contains("Permission denied"), "{text}");
    // The store is in the state directory, the service's user owns it, and
    // it holds the persistent session.
    let store = state.join("sessions.redb");
    let meta =
        std::fs::metadata(&store).unwrap_or_else(|e| panic!("{}: {e}\n{text}", store.display()));
    assert!(meta.len() > 0);
    assert!(
        text.contains(&format!(
            "{id}:{id} 640 {} /var/lib/mqttsn/sessions.redb",
            meta.len(),
            id = SERVICE_ID
        )) || text.contains(&format!(
            "{id}:{id} 600 {} /var/lib/mqttsn/sessions.redb",
            meta.len(),
            id = SERVICE_ID
        )) || text.contains(&format!(
            "{id}:{id} 644 {} /var/lib/mqttsn/sessions.redb",
            meta.len(),
            id = SERVICE_ID
        )),
        "{text}"
    );
    let redb = std::fs::read(&store).unwrap();
    assert!(redb.windows(14).any(|w| w == b"service-sensor"), "the session is not in the store");
    // Nothing was written anywhere else: the upper layers hold only what
    // the test put there.
    let listing = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> =
            walk(d).into_iter().map(|p| p.strip_prefix(d).unwrap().display().to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(listing(&up("etc")), ["mqttsn", "mqttsn/gateway.toml"]);
    assert_eq!(
        listing(&up("usr-local")),
        [
            "bin",
            format!("bin/{}", Path::new(bin_rel).file_name().unwrap().to_string_lossy()).as_str()
        ]
    );
    assert_eq!(listing(&up("var-lib")), ["mqttsn"]);
    let _ = std::fs::remove_dir_all(&s);
}

fn walk(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(d) {
        for e in entries.flatten() {
            let p = e.path();
            out.push(p.clone());
            if p.is_dir() {
                out.extend(walk(&p));
            }
        }
    }
    out
}

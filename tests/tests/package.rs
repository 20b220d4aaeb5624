//! The Debian packages built by `packaging/build-deb` (scripts/test builds
//! them for amd64, arm64 and armhf before the tests run): their control
//! fields, their contents, their maintainer scripts (run against stand-ins
//! that record what they are asked), lintian, and each one unpacked into a
//! scratch root with `dpkg -x`, where the unit must point at the packaged
//! binary and the binaries must run (under qemu for the ARM ones) and need
//! at most glibc 2.31.
//!
//! A package for the host that is missing is built here; under
//! `MQTTSN_REQUIRE_TOOLS=1` (scripts/test) all three must be there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// target/debug/deps/<test> -> target
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).and_then(Path::parent).unwrap().to_path_buf()
}

fn version() -> String {
    let toml = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    let section = toml.split("[workspace.package]").nth(1).unwrap();
    let line = section.lines().find(|l| l.starts_with("version = ")).unwrap();
    line.trim_start_matches("version = ").trim_matches('"').to_owned()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn host_arch() -> String {
    run(Command::new("dpkg").arg("--print-architecture")).trim().to_owned()
}

/// The package for `arch`, built if missing and it is the host's.
fn deb(arch: &str) -> Option<PathBuf> {
    let path = target_dir().join("deb").join(format!("mqttsn-gateway_{}_{arch}.deb", version()));
    if !path.is_file() && arch == host_arch() {
        run(Command::new(repo().join("packaging/build-deb"))
            .arg(arch)
            .env("CARGO_TARGET_DIR", target_dir()));
    }
    if path.is_file() {
        return Some(path);
    }
    assert!(
        std::env::var_os("MQTTSN_REQUIRE_TOOLS").is_none(),
        "{} is missing: scripts/test builds it (packaging/build-deb {arch})",
        path.display()
    );
    eprintln!("no {arch} package: {} (packaging/build-deb {arch})", path.display());
    None
}

fn scratch(name: &str) -> PathBuf {
    let d =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

const FILES: &[&str] = &[
    "./etc/mqttsn/gateway.toml",
    "./lib/systemd/system/mqttsn-gateway.service",
    "./usr/bin/mqttsn",
    "./usr/bin/mqttsn-gateway",
    "./usr/share/bash-completion/completions/mqttsn",
    "./usr/share/bash-completion/completions/mqttsn-gateway",
    "./usr/share/doc/mqttsn-gateway/changelog.gz",
    "./usr/share/doc/mqttsn-gateway/copyright",
    "./usr/share/fish/vendor_completions.d/mqttsn-gateway.fish",
    "./usr/share/fish/vendor_completions.d/mqttsn.fish",
    "./usr/share/man/man1/mqttsn-bench.1.gz",
    "./usr/share/man/man1/mqttsn-dump.1.gz",
    "./usr/share/man/man1/mqttsn-gateway.1.gz",
    "./usr/share/man/man1/mqttsn-pub.1.gz",
    "./usr/share/man/man1/mqttsn-relay.1.gz",
    "./usr/share/man/man1/mqttsn-sub.1.gz",
    "./usr/share/man/man1/mqttsn.1.gz",
    "./usr/share/zsh/vendor-completions/_mqttsn",
    "./usr/share/zsh/vendor-completions/_mqttsn-gateway",
];

fn check(arch: &str) {
    let Some(deb) = deb(arch) else { return };
    let field =
        |f: &str| run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(f)).trim().to_owned();
    assert_eq!(field("Package"), "mqttsn-gateway");
    assert_eq!(field("Architecture"), arch);
    assert_eq!(field("Version"), version());
    let depends = field("Depends");
    assert!(depends.contains("adduser"), "{depends}");
    let libc = depends
        .split(", ")
        .find_map(|d| d.strip_prefix("libc6 (>= ")?.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no libc6 version in {depends}"));
    assert!(at_most(libc, "2.31"), "{arch}: needs glibc {libc}, above 2.31 (Bullseye)");

    // Contents: exactly these files, owned by root.
    let listing = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    let mut files: Vec<&str> = listing
        .lines()
        .filter(|l| !l.starts_with('d'))
        .map(|l| {
            assert!(l.contains(" root/root "), "{l}");
            l.rsplit(' ').next().unwrap()
        })
        .collect();
    files.sort_unstable();
    assert_eq!(files, FILES, "{arch}: package contents");

    // Control: the conffile, and maintainer scripts that parse.
    let control = scratch(&format!("control-{arch}"));
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    assert_eq!(
        std::fs::read_to_string(control.join("conffiles")).unwrap(),
        "/etc/mqttsn/gateway.toml\n"
    );
    for s in ["postinst", "prerm", "postrm"] {
        run(Command::new("sh").arg("-n").arg(control.join(s)));
    }

    // Unpacked into a scratch root.
    let root = scratch(&format!("root-{arch}"));
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root));
    let unit =
        std::fs::read_to_string(root.join("lib/systemd/system/mqttsn-gateway.service")).unwrap();
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).unwrap();
    assert_eq!(exec, "/usr/bin/mqttsn-gateway --config /etc/mqttsn/gateway.toml");
    assert!(unit.contains("StateDirectory=mqttsn") && unit.contains("User=mqttsn"));
    assert_eq!(
        std::fs::read(root.join("etc/mqttsn/gateway.toml")).unwrap(),
        std::fs::read(repo().join("config/gateway.toml")).unwrap()
    );
    for page in FILES.iter().filter(|f| f.ends_with(".1.gz")) {
        let text = run(Command::new("gzip").arg("-dc").arg(root.join(page)));
        assert!(text.contains(".TH"), "{page} is not a man page");
    }
    for c in FILES.iter().filter(|f| f.contains("bash-completion")) {
        run(Command::new("bash").arg("-n").arg(root.join(c)));
    }
    // The binaries: at most glibc 2.31, and they run.
    let elf = |b: &str| run(Command::new("file").arg("-L").arg(root.join("usr/bin").join(b)));
    let machine = match arch {
        "amd64" => "x86-64",
        "arm64" => "ARM aarch64",
        _ => "ARM, EABI5",
    };
    for b in ["mqttsn-gateway", "mqttsn"] {
        let f = elf(b);
        assert!(
            f.contains(machine) && f.contains("stripped") && !f.contains("not stripped"),
            "{f}"
        );
        let versions = run(Command::new("readelf")
            .args(["-W", "--version-info"])
            .arg(root.join("usr/bin").join(b)));
        for v in versions.split("GLIBC_").skip(1) {
            let v: String = v.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
            assert!(at_most(&v, "2.31"), "{arch} {b} needs GLIBC_{v}");
        }
        let binary = root.join("usr/bin").join(b);
        let mut cmd = match arch {
            "amd64" => Command::new(&binary),
            "arm64" => {
                let mut c = Command::new("qemu-aarch64");
                c.args(["-L", "/usr/aarch64-linux-gnu"]).arg(&binary);
                c
            }
            _ => {
                let mut c = Command::new("qemu-arm");
                c.args(["-L", "/usr/arm-linux-gnueabihf"]).arg(&binary);
                c
            }
        };
        let out = run(cmd.arg("--version"));
        assert!(out.starts_with(b) && out.contains(&version()), "{arch} {b} --version: {out}");
    }

    // postinst configure, with stand-ins for the system tools: it creates
    // the system user when there is none, then enables the unit.
    let fake = scratch(&format!("fakebin-{arch}"));
    let log = fake.join("calls.log");
    for tool in ["adduser", "deb-systemd-helper", "deb-systemd-invoke", "systemctl"] {
        let script = format!("#!/bin/sh\necho \"{tool} $*\" >> {}\n", log.display());
        write_exec(&fake.join(tool), &script);
    }
    // getent: no such user yet.
    write_exec(&fake.join("getent"), "#!/bin/sh\nexit 2\n");
    let path = format!("{}:{}", fake.display(), std::env::var("PATH").unwrap_or_default());
    run(Command::new("sh").arg(control.join("postinst")).arg("configure").env("PATH", &path));
    let calls = std::fs::read_to_string(&log).unwrap();
    let adduser =
        calls.lines().find(|l| l.starts_with("adduser ")).unwrap_or_else(|| panic!("{calls}"));
    for a in ["--system", "--group", "--home /var/lib/mqttsn", "--no-create-home", "mqttsn"] {
        assert!(adduser.contains(a), "{adduser}");
    }
    assert!(
        calls.contains("deb-systemd-helper") && calls.contains("mqttsn-gateway.service"),
        "{calls}"
    );
    // With the user there, postinst leaves it alone.
    std::fs::remove_file(&log).unwrap();
    write_exec(
        &fake.join("getent"),
        "#!/bin/sh\necho mqttsn:x:999:999::/var/lib/mqttsn:/usr/sbin/nologin\n",
    );
    run(Command::new("sh").arg(control.join("postinst")).arg("configure").env("PATH", &path));
    let calls = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!calls.contains("adduser"), "{calls}");
    for d in [control, root, fake] {
        let _ = std::fs::remove_dir_all(d);
    }
}

fn write_exec(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `a <= b` for dotted versions.
fn at_most(a: &str, b: &str) -> bool {
    let parse = |v: &str| v.split('.').map(|p| p.parse::<u32>().unwrap_or(0)).collect::<Vec<_>>();
    parse(a) <= parse(b)
}

#[test]
fn the_amd64_package() {
    check("amd64");
}

#[test]
fn the_arm64_package() {
    check("arm64");
}

#[test]
fn the_armhf_package() {
    check("armhf");
}

#[test]
fn lintian_is_clean_on_every_package() {
    // Every warning or error fails; the informational tags that remain are
    // explained in docs/packaging.md.
    for arch in ["amd64", "arm64", "armhf"] {
        let Some(deb) = deb(arch) else { continue };
        let out = Command::new("lintian")
            .args(["--fail-on", "error,warning"])
            .arg(&deb)
            .output()
            .expect("lintian (Debian package lintian) is required; scripts/test installs it");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "lintian {arch}:\n{text}");
        assert!(
            !text.lines().any(|l| l.starts_with("E:") || l.starts_with("W:")),
            "lintian {arch}:\n{text}"
        );
    }
}

//! The microcontroller client's footprint: a minimal firmware (connect,
//! register, publish at QoS 1, one sleep cycle) built for a Cortex-M4F with
//! `opt-level = "z"`, fat LTO and panic-halt; flash and static RAM measured
//! with `arm-none-eabi-size`, and held under a ceiling.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

/// Flash (.text + .rodata) ceiling, octets.
const FLASH_CEILING: u64 = 12 * 1024;
/// RAM ceiling for the client (static RAM plus the client itself), octets.
const RAM_CEILING: u64 = 2 * 1024;

#[test]
fn firmware_fits_12_kib_flash_and_2_kib_ram() {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../client-embedded/examples/footprint");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--quiet"])
        .current_dir(&dir)
        // The example's own target directory, not the workspace's.
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .expect("cargo build of the footprint example");
    assert!(
        status.success(),
        "the footprint example does not build (rustup target add thumbv7em-none-eabihf)"
    );
    let elf = dir.join("target/thumbv7em-none-eabihf/release/mqttsn-client-footprint");
    let out = Command::new("arm-none-eabi-size")
        .args(["-A", elf.to_str().unwrap()])
        .output()
        .unwrap_or_else(|e| panic!("arm-none-eabi-size is required ({e}); scripts/test installs binutils-arm-none-eabi"));
    let text = String::from_utf8_lossy(&out.stdout);
    let section = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| {
                let mut f = l.split_whitespace();
                (f.next() == Some(name)).then(|| f.next().and_then(|s| s.parse().ok())).flatten()
            })
            .unwrap_or(0)
    };
    let flash = section(".text") + section(".rodata");
    let static_ram = section(".data") + section(".bss");
    // The client's size as the firmware builds it (without the default
    // `failover` feature): the value of its MQTTSN_CLIENT_SIZE static.
    let client = firmware_u32(&elf, "::MQTTSN_CLIENT_SIZE");
    println!("flash {flash} octets, static RAM {static_ram} octets, client {client} octets");
    assert!(flash > 1000, "suspiciously small: {text}");
    assert!(flash <= FLASH_CEILING, "flash {flash} over {FLASH_CEILING}: {text}");
    assert!(
        static_ram + client <= RAM_CEILING,
        "RAM {static_ram} + client {client} over {RAM_CEILING}"
    );
    // No formatting machinery in the firmware.
    let nm = Command::new("arm-none-eabi-nm").args(["-C", elf.to_str().unwrap()]).output().unwrap();
    assert!(!String::from_utf8_lossy(&nm.stdout).contains("core::fmt"), "core::fmt is linked");
}

/// The value of a `u32` static of the firmware, found by its demangled
/// name's ending.
fn firmware_u32(elf: &std::path::Path, name: &str) -> u64 {
    let nm = Command::new("arm-none-eabi-nm").args(["-C"]).arg(elf).output().unwrap();
    let nm = String::from_utf8_lossy(&nm.stdout);
    let addr = nm
        .lines()
        .find(|l| l.ends_with(name))
        .and_then(|l| u64::from_str_radix(l.split_whitespace().next()?, 16).ok())
        .unwrap_or_else(|| panic!("no symbol {name} in the firmware"));
    let dump = Command::new("arm-none-eabi-objdump")
        .args([
            "-s",
            &format!("--start-address={addr:#x}"),
            &format!("--stop-address={:#x}", addr + 4),
        ])
        .arg(elf)
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&dump.stdout);
    // " 3768 580a0000                             X..."
    let word = dump
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            u64::from_str_radix(f.next()?, 16).ok().filter(|a| *a == addr)?;
            f.next().filter(|w| w.len() == 8).map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("no contents at {addr:#x}: {dump}"));
    let bytes: Vec<u8> =
        (0..4).map(|i| u8::from_str_radix(&word[2 * i..2 * i + 2], 16).unwrap()).collect();
    u64::from(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

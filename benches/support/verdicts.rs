//! The synthetic verdicts of the drain and soak benches: one key per server
//! and region, realistic fields, and the tenants they belong to. Shared so
//! both benches write the same load.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use archiver_operator::archive::verdict::{REGIONS, verdict_key};

/// Servers per tenant: 50,000 servers are 1,000 tenants.
pub const SERVERS_PER_TENANT: usize = 50;

/// The tenant number of server `server`.
pub fn tenant_number(server: usize) -> usize {
    server / SERVERS_PER_TENANT
}

/// Tenant number `number` as a UUID.
pub fn tenant(number: usize) -> Uuid {
    Uuid::from_u128(0x6f1c_0000_0000_4000_8000_0000_0000_0000 + number as u128)
}

/// splitmix64 finalizer: cheap, deterministic spread.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Key number `i` of a minute: server `i / 5`, region `i % 5`.
pub fn key_of(i: usize, minute: DateTime<Utc>) -> String {
    let server = i / REGIONS.len();
    verdict_key(
        tenant(tenant_number(server)),
        &format!("srv-{server:05}"),
        REGIONS[i % REGIONS.len()],
        minute,
    )
}

/// Realistic fields: mostly up, a SHA-256-sized tool list hash, the
/// coalescer's seal.
pub fn fields_of(
    i: usize,
    minute: DateTime<Utc>,
    hashes: &[String],
) -> [(&'static str, String); 7] {
    let server = i / REGIONS.len();
    let h = mix(i as u64 ^ (minute.timestamp() as u64).wrapping_mul(0x0100_0000_01b3));
    let state = match h % 100 {
        0..=84 => "up",
        85..=91 => "down",
        92..=95 => "degraded",
        96..=97 => "auth-walled",
        _ => "unknown",
    };
    let error_kind = match (state, h % 4) {
        ("up", _) => "",
        (_, 0) => "tls-expired",
        (_, 1) => "timeout",
        (_, 2) => "connect-refused",
        _ => "http-5xx",
    };
    [
        ("state", state.to_string()),
        ("p95_ms", (40 + (h >> 8) % 900).to_string()),
        ("tool_list_hash", hashes[server % hashes.len()].clone()),
        ("error_kind", error_kind.to_string()),
        (
            "asn",
            ["16509", "13335", "15169", "8075", "14061"][server % 5].to_string(),
        ),
        (
            "registry_of_origin",
            ["mcp.so", "smithery.ai", "glama.ai", "github"][server % 4].to_string(),
        ),
        ("verdict_sealed", "1".to_string()),
    ]
}

/// 256 distinct SHA-256-sized tool-list hashes.
pub fn tool_list_hashes() -> Vec<String> {
    (0..256u64)
        .map(|n| {
            format!(
                "{:016x}{:016x}{:016x}{:016x}",
                mix(n),
                mix(n + 1000),
                mix(n + 2000),
                mix(n + 3000)
            )
        })
        .collect()
}

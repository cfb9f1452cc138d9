//! The service manager in the binary: the `[manager]` config, opening the registry it names,
//! the management API (`/manager/...`), `portico agent` (alias `allocator`) and `portico
//! services`. The registry and the agent themselves are the `registry` and `agent` crates;
//! `wire::manager` puts them together as the built-in service `manager`.

pub mod agent_cmd;
pub mod api;
pub mod config;
pub mod services_cmd;

use anyhow::Context as _;
use registry::{AnyRegistry, EmbeddedRegistry, RedisOptions, RedisRegistry};
use service::DataDir;

pub use config::ManagerConfig;

/// Subdirectory of the data directory holding the embedded catalog.
pub const CATALOG_DIR: &str = "manager";

/// The registry `config` names: the embedded one (its catalog in `data_dir/manager/`) or
/// Redis (connected on first use).
pub async fn open_registry(
    config: &ManagerConfig,
    data_dir: &DataDir,
) -> anyhow::Result<AnyRegistry> {
    if config.is_embedded() {
        let dir = data_dir.subdir(CATALOG_DIR)?;
        let registry = EmbeddedRegistry::open(dir)
            .await
            .context("opening the embedded registry")?;
        return Ok(AnyRegistry::Embedded(registry));
    }
    Ok(AnyRegistry::Redis(redis_registry(config)?))
}

/// The Redis registry of `config` (which names a redis:// URL).
pub fn redis_registry(config: &ManagerConfig) -> anyhow::Result<RedisRegistry> {
    let options = RedisOptions {
        url: config.registry.clone(),
        key_prefix: config.key_prefix.clone(),
        timeout: config.registry_timeout,
    };
    Ok(RedisRegistry::new(&options)?)
}

//! `connection.json` (CONTRACT.md): how the CLI, scripts and tests find a running simulator.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const CONNECTION_FILE: &str = "connection.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Admin {
    pub client_id: String,
    pub client_secret: String,
    pub object_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DemoVm {
    pub id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Connection {
    pub arm: String,
    pub aad: String,
    pub graph: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imds: Option<String>,
    pub ca_cert: PathBuf,
    pub tenant_id: String,
    pub subscription_id: String,
    pub admin: Admin,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demo_vm: Option<DemoVm>,
    /// The source-address-mode IMDS listener, when one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imds_source: Option<String>,
    /// The demo VM's VM-extension endpoint (`--imds-extension-port`), when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imds_extension: Option<String>,
}

impl Connection {
    pub fn path(data_dir: &Path) -> PathBuf {
        data_dir.join(CONNECTION_FILE)
    }

    /// Writes atomically (temp file, then rename): readers never see half a file.
    pub fn write(&self, data_dir: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        misim_core::tls::write_atomically(&Self::path(data_dir), text.as_bytes())
    }

    pub fn read(data_dir: &Path) -> anyhow::Result<Self> {
        let path = Self::path(data_dir);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            anyhow::anyhow!(
                "cannot read {}: {e}. Is `misim up --data-dir {}` running?",
                path.display(),
                data_dir.display()
            )
        })?;
        Ok(serde_json::from_str(&text)?)
    }
}

//! Settings from outside the code: each pipeline's [`PipelineConfig`] and
//! the runtime's own settings, read in layers — defaults, a TOML file,
//! `FERRY_`-prefixed environment variables — and checked, every error
//! naming its setting and where it came from.
//!
//! The file's shape (every key optional; durations in human form):
//!
//! ```toml
//! [runtime]
//! shutdown_grace = "20s"
//!
//! [pipeline]            # every pipeline
//! visibility_timeout = "45s"
//! max_receives = 5
//!
//! [pipelines.resize]    # one pipeline, over [pipeline]
//! workers = 8
//! restart = { max_restarts = 10 }
//! ```
//!
//! The environment overrides the file, a double underscore between levels:
//! `FERRY_PIPELINE__VISIBILITY_TIMEOUT=45s`,
//! `FERRY_PIPELINES__RESIZE__WORKERS=8`,
//! `FERRY_RUNTIME__SHUTDOWN_GRACE=20s` (keys are lowercased, so a pipeline
//! named with capitals or dashes is set in the file only). AWS settings are
//! not here: the SDK's own chain (`AWS_REGION`, profiles, roles) reads them.
//!
//! ```
//! use ferry::prelude::*;
//! use ferry::Settings;
//!
//! let settings = Settings::from_toml(
//!     r#"
//!     [pipeline]
//!     visibility_timeout = "45s"
//!     [pipelines.resize]
//!     workers = 8
//!     "#,
//! );
//! let config = settings.pipeline("resize").unwrap();
//! assert_eq!(config.workers, 8);
//! assert_eq!(config.visibility_timeout, std::time::Duration::from_secs(45));
//! let _ = Pipeline::new("resize").config(config);
//! let _ = Runtime::builder().shutdown_grace(settings.runtime().unwrap().shutdown_grace);
//! ```

use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;

use crate::config::PipelineConfig;

/// The environment variables' prefix.
pub const ENV_PREFIX: &str = "FERRY_";

/// A setting that could not be read, or that a check refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("setting `{key}`{}: {message}", .source_name.as_deref().map(|s| format!(" (from {s})")).unwrap_or_default())]
pub struct SettingsError {
    /// The setting, as a path of keys (`visibility_timeout`,
    /// `restart.max_restarts`; a file or a missing file: empty).
    pub key: String,
    /// Where its value came from (a file, the environment), when known.
    pub source_name: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// The runtime's own settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeSettings {
    /// How long a graceful shutdown lets started jobs finish
    /// ([`crate::RuntimeBuilder::shutdown_grace`]).
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        Self {
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Settings read from a file and the environment (see the module's docs).
#[derive(Debug, Clone)]
pub struct Settings {
    layers: Figment,
}

impl Settings {
    /// Reads `file` (TOML) when given, then the `FERRY_` environment
    /// variables over it. A file named but missing or unreadable is an
    /// error; values are checked when a section is taken.
    pub fn load(file: Option<&Path>) -> Result<Self, SettingsError> {
        let mut layers = Figment::new();
        if let Some(path) = file {
            // Figment skips a missing file: one named must be there.
            std::fs::read_to_string(path).map_err(|e| SettingsError {
                key: String::new(),
                source_name: Some(path.display().to_string()),
                message: format!("cannot read the settings file: {e}"),
            })?;
            layers = layers.merge(Toml::file_exact(path));
        }
        Ok(Self {
            layers: layers.merge(Env::prefixed(ENV_PREFIX).split("__")),
        })
    }

    /// Settings from TOML text alone (no environment): for tests and
    /// settings built into a binary.
    pub fn from_toml(text: &str) -> Self {
        Self {
            layers: Figment::new().merge(Toml::string(text)),
        }
    }

    /// The settings of pipeline `name`: its defaults, then `[pipeline]`,
    /// then `[pipelines.NAME]`, checked as `Runtime::start` would.
    pub fn pipeline(&self, name: &str) -> Result<PipelineConfig, SettingsError> {
        let config: PipelineConfig = Figment::from(Serialized::defaults(PipelineConfig::default()))
            .merge(self.layers.focus("pipeline"))
            .merge(self.layers.focus(&format!("pipelines.{name}")))
            .extract()
            .map_err(read_error)?;
        config.validate().map_err(|e| SettingsError {
            key: e.field.to_owned(),
            source_name: None,
            message: e.message,
        })?;
        Ok(config)
    }

    /// The runtime's settings: defaults, then `[runtime]`.
    pub fn runtime(&self) -> Result<RuntimeSettings, SettingsError> {
        Figment::from(Serialized::defaults(RuntimeSettings::default()))
            .merge(self.layers.focus("runtime"))
            .extract()
            .map_err(read_error)
    }
}

/// The first of figment's errors, named by its key.
fn read_error(e: figment::Error) -> SettingsError {
    let e = e.into_iter().next().expect("an error holds at least one");
    SettingsError {
        key: e.path.join("."),
        source_name: e.metadata.as_ref().map(|m| m.name.to_string()),
        message: e.kind.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_override_in_order_and_keep_defaults() {
        let s = Settings::from_toml(
            r#"
            [runtime]
            shutdown_grace = "1m 30s"
            [pipeline]
            visibility_timeout = "45s"
            workers = 3
            [pipelines.a]
            workers = 8
            claim_ttl = "2m"
            restart = { max_restarts = 10 }
            "#,
        );
        let a = s.pipeline("a").unwrap();
        assert_eq!(a.workers, 8);
        assert_eq!(a.visibility_timeout, Duration::from_secs(45));
        assert_eq!(a.claim_ttl, Some(Duration::from_secs(120)));
        assert_eq!(a.restart.max_restarts, 10);
        let defaults = PipelineConfig::default();
        assert_eq!(a.restart.backoff_max, defaults.restart.backoff_max);
        assert_eq!(a.max_lease_age, defaults.max_lease_age);
        let b = s.pipeline("b").unwrap();
        assert_eq!((b.workers, b.claim_ttl), (3, None));
        assert_eq!(s.runtime().unwrap().shutdown_grace, Duration::from_secs(90));
    }

    #[test]
    fn each_error_names_its_setting() {
        let typo = Settings::from_toml("[pipeline]\nvisibilty_timeout = \"45s\"\n");
        let e = typo.pipeline("a").unwrap_err();
        assert!(e.to_string().contains("visibilty_timeout"), "{e}");
        let bad = Settings::from_toml("[pipelines.a]\nvisibility_timeout = \"soon\"\n");
        let e = bad.pipeline("a").unwrap_err();
        assert_eq!(e.key, "visibility_timeout", "{e}");
        let refused = Settings::from_toml("[pipeline]\nvisibility_timeout = \"13h\"\n");
        let e = refused.pipeline("a").unwrap_err();
        assert_eq!(e.key, "visibility_timeout", "{e}");
        let nested = Settings::from_toml("[pipeline.restart]\nmax_restarts = -1\n");
        let e = nested.pipeline("a").unwrap_err();
        assert_eq!(e.key, "restart.max_restarts", "{e}");
        let missing = Settings::load(Some(Path::new("/nonexistent/ferry.toml"))).unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/ferry.toml"),
            "{missing}"
        );
    }

    #[test]
    // figment's jail returns its own (large) error type.
    #[allow(clippy::result_large_err)]
    fn the_environment_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "ferry.toml",
                "[pipeline]\nvisibility_timeout = \"45s\"\nworkers = 2\n",
            )?;
            jail.set_env("FERRY_PIPELINE__VISIBILITY_TIMEOUT", "1m");
            jail.set_env("FERRY_PIPELINES__RESIZE__WORKERS", "6");
            jail.set_env("FERRY_RUNTIME__SHUTDOWN_GRACE", "5s");
            let s = Settings::load(Some(Path::new("ferry.toml"))).expect("loads");
            let resize = s.pipeline("resize").expect("valid");
            assert_eq!(resize.visibility_timeout, Duration::from_secs(60));
            assert_eq!(resize.workers, 6);
            assert_eq!(s.pipeline("other").expect("valid").workers, 2);
            assert_eq!(
                s.runtime().expect("valid").shutdown_grace,
                Duration::from_secs(5)
            );
            jail.set_env("FERRY_PIPELINE__WORKERS", "many");
            let e = Settings::load(None)
                .expect("loads")
                .pipeline("x")
                .unwrap_err();
            assert_eq!(e.key, "workers", "{e}");
            Ok(())
        });
    }
}

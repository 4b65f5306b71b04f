//! Which runtime a manager runs on: `auto`, `boxlite` or `local`, decided
//! once at startup from the boxlite preflight, with the reason kept for
//! the startup log, `/api/health`, `/api/product` and `blink-cli doctor`.

use super::RuntimeKind;
use super::preflight::Preflight;
use crate::error::{Error, Result};

/// The operator's choice (`runtime = ...`, `--runtime`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum RuntimeChoice {
    /// BoxLite when its preflight passes, else local.
    #[default]
    Auto,
    Boxlite,
    Local,
}

impl std::str::FromStr for RuntimeChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "boxlite" => Ok(Self::Boxlite),
            "local" => Ok(Self::Local),
            other => Err(Error::InvalidArgument(format!(
                "runtime: unknown runtime {other:?}: expected auto, boxlite or local"
            ))),
        }
    }
}

impl TryFrom<String> for RuntimeChoice {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl std::fmt::Display for RuntimeChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Boxlite => "boxlite",
            Self::Local => "local",
        })
    }
}

/// The decision: what was asked, what runs, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Selection {
    /// What the configuration asked for.
    pub requested: RuntimeChoice,
    /// The runtime in use (`local`, `boxlite`; a test's own runtime says
    /// its name).
    pub runtime: String,
    /// One sentence: why this runtime.
    pub reason: String,
}

/// Decide. `runtime = "boxlite"` where the preflight fails is an error
/// naming the cause, never a silent fallback.
pub fn select(requested: RuntimeChoice, boxlite: &Preflight) -> Result<(RuntimeKind, Selection)> {
    let (runtime, reason) = match (requested, &boxlite.verdict) {
        (RuntimeChoice::Local, _) => (RuntimeKind::Local, "configured: runtime = \"local\"".into()),
        (RuntimeChoice::Boxlite, None) => (
            RuntimeKind::Boxlite,
            "configured: runtime = \"boxlite\"; the preflight passed".into(),
        ),
        (RuntimeChoice::Boxlite, Some(verdict)) => {
            return Err(Error::RuntimeUnavailable {
                runtime: "boxlite".into(),
                reason: verdict.clone(),
            });
        }
        (RuntimeChoice::Auto, None) => (
            RuntimeKind::Boxlite,
            "auto: the boxlite preflight passed (hardware virtualization)".into(),
        ),
        (RuntimeChoice::Auto, Some(verdict)) => (
            RuntimeKind::Local,
            format!("auto: boxlite is not usable here ({verdict}), so local"),
        ),
    };
    Ok((
        runtime,
        Selection {
            requested,
            runtime: runtime.name().into(),
            reason,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Check;

    fn preflight(verdict: Option<&str>) -> Preflight {
        Preflight {
            checks: vec![Check {
                name: "x".into(),
                ok: verdict.is_none(),
                detail: verdict.unwrap_or("fine").into(),
            }],
            verdict: verdict.map(str::to_owned),
        }
    }

    #[test]
    fn parses_the_three_values_and_names_a_bad_one() {
        assert_eq!(
            "auto".parse::<RuntimeChoice>().unwrap(),
            RuntimeChoice::Auto
        );
        assert_eq!(
            "boxlite".parse::<RuntimeChoice>().unwrap(),
            RuntimeChoice::Boxlite
        );
        assert_eq!(
            "local".parse::<RuntimeChoice>().unwrap(),
            RuntimeChoice::Local
        );
        let err = "qemu".parse::<RuntimeChoice>().unwrap_err().to_string();
        assert!(
            err.contains("\"qemu\"") && err.contains("auto, boxlite or local"),
            "{err}"
        );
    }

    #[test]
    fn auto_falls_back_to_local_and_says_why() {
        let (kind, s) = select(RuntimeChoice::Auto, &preflight(Some("kvm_pvm: no"))).unwrap();
        assert_eq!((kind, s.runtime.as_str()), (RuntimeKind::Local, "local"));
        assert!(s.reason.contains("kvm_pvm: no"), "{}", s.reason);
        let (kind, _) = select(RuntimeChoice::Auto, &preflight(None)).unwrap();
        assert_eq!(kind, RuntimeKind::Boxlite);
    }

    #[test]
    fn boxlite_where_it_cannot_work_is_an_error_naming_the_cause() {
        let err = select(RuntimeChoice::Boxlite, &preflight(Some("kvm_pvm: no")))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("boxlite") && err.contains("kvm_pvm: no"),
            "{err}"
        );
    }

    #[test]
    fn local_is_local_whatever_the_preflight() {
        let (kind, _) = select(RuntimeChoice::Local, &preflight(None)).unwrap();
        assert_eq!(kind, RuntimeKind::Local);
    }
}

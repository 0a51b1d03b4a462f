//! Readiness of every component, for `/readyz` and the `tidemark_component_ready` gauge.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Shared readiness registry. Components register as not ready and flip themselves.
#[derive(Debug, Clone, Default)]
pub struct Health {
    inner: Arc<Mutex<BTreeMap<String, Option<String>>>>,
}

impl Health {
    /// A new, empty registry.
    pub fn new() -> Health {
        Health::default()
    }

    /// Marks `component` (e.g. `shop/source`, `shop/sink/replica`) ready.
    pub fn ready(&self, component: &str) {
        metrics::gauge!(crate::metrics::COMPONENT_READY, crate::metrics::L_COMPONENT => component.to_owned())
            .set(1.0);
        if let Ok(mut m) = self.inner.lock() {
            m.insert(component.to_owned(), None);
        }
    }

    /// Marks `component` not ready, with the reason shown by `/readyz`.
    pub fn not_ready(&self, component: &str, reason: impl Into<String>) {
        metrics::gauge!(crate::metrics::COMPONENT_READY, crate::metrics::L_COMPONENT => component.to_owned())
            .set(0.0);
        if let Ok(mut m) = self.inner.lock() {
            m.insert(component.to_owned(), Some(reason.into()));
        }
    }

    /// Whether all components are ready, and the reasons of those that are not.
    pub fn report(&self) -> (bool, Vec<(String, String)>) {
        let Ok(m) = self.inner.lock() else {
            return (false, vec![("health".into(), "registry poisoned".into())]);
        };
        let failing: Vec<(String, String)> = m
            .iter()
            .filter_map(|(k, v)| v.as_ref().map(|r| (k.clone(), r.clone())))
            .collect();
        (failing.is_empty() && !m.is_empty(), failing)
    }
}

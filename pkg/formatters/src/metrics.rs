//! Formatter metrics: runs by formatter, operation and result, and cache hits and misses.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::{FormatterError, FormatterKind, Op};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    formatter: &'static str,
    operation: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    formatter: &'static str,
    result: &'static str,
}

/// Counters of one [`crate::Formatters`] engine; cheap to clone (shared counters).
#[derive(Clone, Debug, Default)]
pub struct FormatterMetrics {
    runs: Family<RunLabels, Counter>,
    cache: Family<CacheLabels, Counter>,
}

impl FormatterMetrics {
    /// Registers `formatter_runs` (`formatter`, `operation`, `result` = `ok` or the error's
    /// [`FormatterError::reason`]) and `formatter_cache` (`formatter`, `result` = hit|miss).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "formatter_runs",
            "Payload formatter runs by formatter, operation and result",
            self.runs.clone(),
        );
        registry.register(
            "formatter_cache",
            "Compiled script/module cache lookups by formatter and result",
            self.cache.clone(),
        );
    }

    /// How many runs ended with `result` (`ok` or an error reason).
    pub fn runs(
        &self,
        formatter: &'static str,
        operation: &'static str,
        result: &'static str,
    ) -> u64 {
        self.runs
            .get_or_create(&RunLabels {
                formatter,
                operation,
                result,
            })
            .get()
    }

    /// How many cache lookups of `formatter` (`javascript`, `wasm`) were hits and misses.
    pub fn cache_counts(&self, formatter: &'static str) -> (u64, u64) {
        let get = |result| {
            self.cache
                .get_or_create(&CacheLabels { formatter, result })
                .get()
        };
        (get("hit"), get("miss"))
    }

    pub(crate) fn observe<T>(
        &self,
        kind: &FormatterKind,
        op: Op,
        result: &Result<T, FormatterError>,
    ) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) => e.reason(),
        };
        self.runs
            .get_or_create(&RunLabels {
                formatter: kind.label(),
                operation: op.label(),
                result: outcome,
            })
            .inc();
    }

    pub(crate) fn cache_hit(&self, formatter: &'static str) {
        self.cache
            .get_or_create(&CacheLabels {
                formatter,
                result: "hit",
            })
            .inc();
    }

    pub(crate) fn cache_miss(&self, formatter: &'static str) {
        self.cache
            .get_or_create(&CacheLabels {
                formatter,
                result: "miss",
            })
            .inc();
    }
}

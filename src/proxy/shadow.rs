//! Reports what a shadow schema would have removed from one call: counted
//! per client and direction, and logged by attribute path, never by value.

use crate::filter::shadow::Removed;
use crate::ops::metrics;
use crate::proxy::ctx::Ctx;

pub(crate) fn report(ctx: &Ctx, client: &str, direction: &'static str, removed: &Removed) {
    metrics::SHADOW_REMOVED.inc_by(&[client, direction], removed.count as u64);
    if removed.count == 0 {
        return;
    }
    let paths = match &removed.paths {
        Some(paths) => paths
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(","),
        // A streamed response is counted as it passes, not walked whole.
        None => "(streamed: not named)".to_string(),
    };
    tracing::info!(
        target: "recordgate::shadow",
        request_id = %ctx.request_id,
        client,
        direction,
        removed = removed.count,
        paths,
        "shadow schema would have removed attributes"
    );
}

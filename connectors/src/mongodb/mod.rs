//! MongoDB sinks: time-series results, raw events and per-entity daily rollups, exactly once
//! through deterministic document ids and a per-(job, sink, task) fence document.

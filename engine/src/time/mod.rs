//! Event time and watermarks.
//!
//! Each input partition has a [`PartitionWatermark`]: bounded out-of-orderness (watermark = the
//! largest event time seen − `max_out_of_orderness`), idleness after `idle_timeout` of wall-clock
//! silence, and quarantine of events too far ahead of the wall clock. An operator with several
//! inputs combines them with a [`WatermarkHolder`]: the minimum over inputs that are not idle.
//!
//! Wall-clock time is always passed in (`now_ms`) rather than read here, so tests control it.

use std::sync::atomic::{AtomicI64, Ordering};

use crate::event::{Timestamp, MAX_TIMESTAMP, MIN_TIMESTAMP};
use crate::topology::WatermarkConfig;

/// Whether an event was admitted by its partition's watermark tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Admitted.
    Accepted,
    /// Further ahead of the wall clock than `max_future_skew`; quarantine it.
    FutureSkew {
        /// How far ahead of the wall clock it was, in ms.
        ahead_ms: i64,
    },
}

/// Marks "no wall-clock activity known yet" in [`PartitionWatermark`]'s activity clock.
const UNKNOWN_ACTIVITY: i64 = i64::MIN;

/// Version byte of [`PartitionWatermark::snapshot`].
const SNAPSHOT_VERSION: u8 = 1;

/// The watermark of one input partition: bounded out-of-orderness, idleness, future skew.
///
/// The watermark is `max event time seen − max_out_of_orderness` (saturating), starts at
/// [`MIN_TIMESTAMP`] and never decreases. [`PartitionWatermark::mark_ended`] moves it to
/// [`MAX_TIMESTAMP`] for a bounded input that has been read to its end.
///
/// Idleness is measured from the last accepted event. Before the first event it is measured
/// from creation ([`PartitionWatermark::new_at`]); a tracker made with
/// [`PartitionWatermark::new`] does not know its creation time and counts from the first
/// [`PartitionWatermark::is_idle`] query instead, which a source polling its idleness makes
/// right away.
#[derive(Debug)]
pub struct PartitionWatermark {
    out_of_orderness: i64,
    idle_timeout: Option<i64>,
    future_skew: Option<i64>,
    max_seen: Option<Timestamp>,
    ended: bool,
    // Atomic so the first `is_idle(&self, now)` can record the start of the idle clock while
    // the tracker stays `Sync`.
    last_activity_ms: AtomicI64,
}

impl Clone for PartitionWatermark {
    fn clone(&self) -> Self {
        PartitionWatermark {
            out_of_orderness: self.out_of_orderness,
            idle_timeout: self.idle_timeout,
            future_skew: self.future_skew,
            max_seen: self.max_seen,
            ended: self.ended,
            last_activity_ms: AtomicI64::new(self.last_activity_ms.load(Ordering::Relaxed)),
        }
    }
}

impl PartitionWatermark {
    /// A tracker with no event seen.
    pub fn new(config: &WatermarkConfig) -> Self {
        PartitionWatermark {
            out_of_orderness: config.max_out_of_orderness.as_millis_i64(),
            idle_timeout: config.idle_timeout.map(|d| d.as_millis_i64()),
            future_skew: config.max_future_skew.map(|d| d.as_millis_i64()),
            max_seen: None,
            ended: false,
            last_activity_ms: AtomicI64::new(UNKNOWN_ACTIVITY),
        }
    }

    /// A tracker with no event seen, created at wall-clock `now_ms`: without events it becomes
    /// idle `idle_timeout` after `now_ms`.
    pub fn new_at(config: &WatermarkConfig, now_ms: i64) -> Self {
        let mut w = Self::new(config);
        w.touch(now_ms);
        w
    }

    /// Observes an event time read at wall-clock `now_ms`.
    ///
    /// An event further than `max_future_skew` ahead of `now_ms` is refused with
    /// [`Admission::FutureSkew`] and changes nothing (neither the watermark nor activity).
    pub fn observe(&mut self, time: Timestamp, now_ms: i64) -> Admission {
        if let Some(skew) = self.future_skew {
            if time > now_ms.saturating_add(skew) {
                return Admission::FutureSkew {
                    ahead_ms: time.saturating_sub(now_ms),
                };
            }
        }
        self.max_seen = Some(self.max_seen.map_or(time, |m| m.max(time)));
        self.touch(now_ms);
        Admission::Accepted
    }

    /// Records wall-clock activity at `now_ms` without an event time (e.g. after a restore, or
    /// when a partition is (re)assigned), restarting the idle clock.
    pub fn touch(&mut self, now_ms: i64) {
        // Exclusive access: a plain store, not an atomic read-modify-write (a locked
        // instruction per event, as `observe` calls this for each one).
        let last = self.last_activity_ms.get_mut();
        *last = (*last).max(now_ms);
    }

    /// The current watermark (max event time seen − max_out_of_orderness); monotone.
    pub fn watermark(&self) -> Timestamp {
        if self.ended {
            return MAX_TIMESTAMP;
        }
        match self.max_seen {
            Some(max) => max.saturating_sub(self.out_of_orderness),
            None => MIN_TIMESTAMP,
        }
    }

    /// The largest event time accepted so far.
    pub fn max_event_time(&self) -> Option<Timestamp> {
        self.max_seen
    }

    /// Marks the partition as read to its end: its watermark becomes [`MAX_TIMESTAMP`] and it
    /// no longer holds any downstream watermark back.
    pub fn mark_ended(&mut self) {
        self.ended = true;
    }

    /// Whether [`PartitionWatermark::mark_ended`] was called.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Whether the partition has been silent longer than `idle_timeout` at `now_ms`. Always
    /// false without an `idle_timeout`.
    ///
    /// An ended partition is never idle: its [`MAX_TIMESTAMP`] watermark must reach the
    /// operators so they emit their last windows.
    pub fn is_idle(&self, now_ms: i64) -> bool {
        let Some(timeout) = self.idle_timeout else {
            return false;
        };
        if self.ended {
            return false;
        }
        let last = match self.last_activity_ms.compare_exchange(
            UNKNOWN_ACTIVITY,
            now_ms,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => now_ms,
            Err(last) => last,
        };
        now_ms.saturating_sub(last) > timeout
    }

    /// State to persist with the partition's position: a version byte and the largest event
    /// time seen (i64 big-endian), or just the version byte before any event. Wall-clock times
    /// are not persisted; the watermark is recomputed with the configuration in force at
    /// restore, so a changed `max_out_of_orderness` applies.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out = vec![SNAPSHOT_VERSION];
        if let Some(max) = self.max_seen {
            out.extend_from_slice(&max.to_be_bytes());
        }
        out
    }

    /// Restores state written by `snapshot`. The partition counts as active from the next
    /// [`PartitionWatermark::is_idle`] query (or [`PartitionWatermark::touch`]), and is not
    /// ended. Corrupt bytes are an error and leave the tracker unchanged.
    pub fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        let max_seen = match bytes {
            [SNAPSHOT_VERSION] => None,
            [SNAPSHOT_VERSION, rest @ ..] => {
                let raw: [u8; 8] = rest.try_into().map_err(|_| {
                    format!(
                        "watermark snapshot has {} bytes after its version, expected 8",
                        rest.len()
                    )
                })?;
                Some(i64::from_be_bytes(raw))
            }
            [version, ..] => {
                return Err(format!(
                    "watermark snapshot version {version} is not supported (this build reads {SNAPSHOT_VERSION})"
                ))
            }
            [] => return Err("empty watermark snapshot".into()),
        };
        self.max_seen = max_seen;
        self.ended = false;
        self.last_activity_ms
            .store(UNKNOWN_ACTIVITY, Ordering::Relaxed);
        Ok(())
    }
}

/// One input of a [`WatermarkHolder`].
#[derive(Debug, Clone, Copy)]
struct Input {
    watermark: Timestamp,
    idle: bool,
}

/// The watermark of a multi-input operator: the minimum over inputs that are not idle.
///
/// - Each input starts at [`MIN_TIMESTAMP`], active; an input's watermark never decreases (a
///   lower report is ignored). An input reporting [`MAX_TIMESTAMP`] has ended.
/// - The combined watermark is the minimum over inputs that are neither idle nor ended. When
///   no input is left to constrain it, it jumps to [`MAX_TIMESTAMP`] if every input has ended,
///   and otherwise holds where it is: an idle input may still resume, so finishing its windows
///   early (or on the strength of another input having ended) would make its events late.
/// - The combined watermark never decreases. An input coming back from idleness behind the
///   combined watermark does not pull it back: its events older than the combined watermark are
///   late, exactly as if they had arrived late on an active input.
#[derive(Debug, Clone)]
pub struct WatermarkHolder {
    inputs: Vec<Input>,
    combined: Timestamp,
}

impl WatermarkHolder {
    /// `inputs` inputs, each at the minimum watermark. With zero inputs the combined watermark
    /// stays at [`MIN_TIMESTAMP`].
    pub fn new(inputs: usize) -> Self {
        WatermarkHolder {
            inputs: vec![
                Input {
                    watermark: MIN_TIMESTAMP,
                    idle: false,
                };
                inputs
            ],
            combined: MIN_TIMESTAMP,
        }
    }

    /// Records input `input`'s watermark; returns the combined watermark if it advanced.
    /// Does not change the input's idleness. An unknown input index is ignored.
    pub fn update(&mut self, input: usize, watermark: Timestamp) -> Option<Timestamp> {
        let slot = self.inputs.get_mut(input)?;
        slot.watermark = slot.watermark.max(watermark);
        self.recompute()
    }

    /// Marks an input idle (ignored by the minimum) or active again; returns the combined
    /// watermark if it advanced. An unknown input index is ignored.
    pub fn set_idle(&mut self, input: usize, idle: bool) -> Option<Timestamp> {
        self.inputs.get_mut(input)?.idle = idle;
        self.recompute()
    }

    /// The combined watermark (never decreases).
    pub fn watermark(&self) -> Timestamp {
        self.combined
    }

    /// Input `input`'s own watermark.
    pub fn input_watermark(&self, input: usize) -> Option<Timestamp> {
        self.inputs.get(input).map(|i| i.watermark)
    }

    /// Whether input `input` is marked idle.
    pub fn is_idle(&self, input: usize) -> Option<bool> {
        self.inputs.get(input).map(|i| i.idle)
    }

    /// The number of inputs.
    pub fn inputs(&self) -> usize {
        self.inputs.len()
    }

    /// Whether every input has ended (reported [`MAX_TIMESTAMP`]).
    pub fn all_ended(&self) -> bool {
        self.inputs.iter().all(|i| i.watermark == MAX_TIMESTAMP)
    }

    fn recompute(&mut self) -> Option<Timestamp> {
        let constraining = self
            .inputs
            .iter()
            .filter(|i| !i.idle && i.watermark != MAX_TIMESTAMP)
            .map(|i| i.watermark)
            .min();
        let target = match constraining {
            Some(min) => min,
            None if !self.inputs.is_empty() && self.all_ended() => MAX_TIMESTAMP,
            None => return None,
        };
        if target > self.combined {
            self.combined = target;
            Some(target)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Duration;
    use proptest::prelude::*;

    fn config(ooo: u64, idle: Option<u64>, skew: Option<u64>) -> WatermarkConfig {
        WatermarkConfig {
            max_out_of_orderness: Duration::from_millis(ooo),
            idle_timeout: idle.map(Duration::from_millis),
            max_future_skew: skew.map(Duration::from_millis),
        }
    }

    #[test]
    fn watermark_trails_max_event_time() {
        let mut w = PartitionWatermark::new(&config(100, None, None));
        assert_eq!(w.watermark(), MIN_TIMESTAMP);
        assert_eq!(w.observe(1_000, 0), Admission::Accepted);
        assert_eq!(w.watermark(), 900);
        w.observe(500, 0); // out of order: no regression
        assert_eq!(w.watermark(), 900);
        w.observe(1_500, 0);
        assert_eq!(w.watermark(), 1_400);
        assert_eq!(w.max_event_time(), Some(1_500));
    }

    #[test]
    fn watermark_arithmetic_saturates() {
        let mut w = PartitionWatermark::new(&config(1_000, None, None));
        w.observe(MIN_TIMESTAMP + 5, 0);
        assert_eq!(w.watermark(), MIN_TIMESTAMP);
        let mut w = PartitionWatermark::new(&config(u64::MAX, None, None));
        w.observe(-10, 0);
        assert_eq!(w.watermark(), MIN_TIMESTAMP);
        let mut w = PartitionWatermark::new(&config(0, None, Some(u64::MAX)));
        assert_eq!(w.observe(MAX_TIMESTAMP, i64::MAX - 1), Admission::Accepted);
        assert_eq!(w.watermark(), MAX_TIMESTAMP);
    }

    #[test]
    fn future_skew_is_quarantined_without_side_effects() {
        let mut w = PartitionWatermark::new_at(&config(0, Some(1_000), Some(5_000)), 0);
        assert_eq!(w.observe(10_000, 6_000), Admission::Accepted);
        assert_eq!(
            w.observe(20_000, 6_000),
            Admission::FutureSkew { ahead_ms: 14_000 }
        );
        assert_eq!(w.watermark(), 10_000);
        // The refused event did not count as activity either.
        assert!(w.is_idle(7_001));
        // Exactly at the bound is accepted.
        assert_eq!(w.observe(12_000, 7_000), Admission::Accepted);
    }

    #[test]
    fn idleness_from_creation_and_from_last_event() {
        let cfg = config(0, Some(1_000), None);
        let w = PartitionWatermark::new_at(&cfg, 10_000);
        assert!(!w.is_idle(11_000));
        assert!(w.is_idle(11_001));

        let mut w = PartitionWatermark::new(&cfg);
        assert!(!w.is_idle(50_000)); // first query starts the idle clock
        assert!(!w.is_idle(51_000));
        assert!(w.is_idle(51_001));
        w.observe(5, 52_000);
        assert!(!w.is_idle(52_500));
        assert!(w.is_idle(53_001));
        // A wall clock stepping back does not make the partition look more recent than it is.
        w.observe(6, 40_000);
        assert!(w.is_idle(53_001));

        let w = PartitionWatermark::new_at(&config(0, None, None), 0);
        assert!(!w.is_idle(i64::MAX));
    }

    #[test]
    fn mark_ended_releases_the_watermark() {
        let mut w = PartitionWatermark::new(&config(10, None, None));
        w.observe(100, 0);
        w.mark_ended();
        assert!(w.is_ended());
        assert_eq!(w.watermark(), MAX_TIMESTAMP);
        w.observe(200, 0);
        assert_eq!(w.watermark(), MAX_TIMESTAMP);
    }

    #[test]
    fn snapshot_restore_round_trip() {
        let cfg = config(100, Some(1_000), None);
        let mut w = PartitionWatermark::new_at(&cfg, 0);
        let empty = w.snapshot();
        w.observe(5_000, 0);
        let snap = w.snapshot();

        let mut r = PartitionWatermark::new(&cfg);
        r.restore(&snap).unwrap();
        assert_eq!(r.watermark(), 4_900);
        // Active from restore: the idle clock starts at the first query.
        assert!(!r.is_idle(1_000_000));
        assert!(r.is_idle(1_001_001));

        // The watermark is recomputed with the current configuration.
        let mut r = PartitionWatermark::new(&config(1_000, None, None));
        r.restore(&snap).unwrap();
        assert_eq!(r.watermark(), 4_000);

        r.restore(&empty).unwrap();
        assert_eq!(r.watermark(), MIN_TIMESTAMP);
    }

    #[test]
    fn restore_rejects_corrupt_bytes_and_keeps_state() {
        let mut w = PartitionWatermark::new(&config(0, None, None));
        w.observe(42, 0);
        for bad in [&[][..], &[2, 0, 0, 0, 0, 0, 0, 0, 1], &[1, 0, 0], &[1; 10]] {
            assert!(w.restore(bad).is_err(), "{bad:?}");
            assert_eq!(w.watermark(), 42);
        }
    }

    #[test]
    fn holder_takes_min_of_active_inputs() {
        let mut h = WatermarkHolder::new(2);
        assert_eq!(h.watermark(), MIN_TIMESTAMP);
        assert_eq!(h.update(0, 100), None);
        assert_eq!(h.update(1, 50), Some(50));
        assert_eq!(h.update(1, 200), Some(100));
        assert_eq!(h.update(1, 150), None); // input watermarks do not regress
        assert_eq!(h.input_watermark(1), Some(200));
        assert_eq!(h.update(0, 300), Some(200));
        assert_eq!(h.update(7, 1_000), None); // unknown input
    }

    #[test]
    fn holder_idle_inputs() {
        let mut h = WatermarkHolder::new(3);
        h.update(0, 100);
        h.update(1, 200);
        assert_eq!(h.set_idle(2, true), Some(100));
        assert_eq!(h.set_idle(0, true), Some(200));
        // All idle: the combined watermark holds.
        assert_eq!(h.set_idle(1, true), None);
        assert_eq!(h.watermark(), 200);
        assert_eq!(h.update(0, 1_000), None);
        assert_eq!(h.watermark(), 200);
        // Input 2 comes back far behind: the combined watermark stays; its old events are late.
        assert_eq!(h.set_idle(2, false), None);
        assert_eq!(h.watermark(), 200);
        assert_eq!(h.update(2, 150), None);
        assert_eq!(h.update(2, 400), Some(400));
        assert_eq!(h.is_idle(0), Some(true));
    }

    #[test]
    fn holder_ended_inputs_release() {
        let mut h = WatermarkHolder::new(2);
        h.update(0, 10);
        assert_eq!(h.update(1, MAX_TIMESTAMP), Some(10));
        assert!(!h.all_ended());
        assert_eq!(h.update(0, MAX_TIMESTAMP), Some(MAX_TIMESTAMP));
        assert!(h.all_ended());
        assert_eq!(WatermarkHolder::new(0).update(0, 5), None);

        // An ended input beside an idle one does not release the idle one's windows.
        let mut h = WatermarkHolder::new(2);
        h.update(0, 10);
        h.update(1, 20);
        assert_eq!(h.set_idle(0, true), Some(20));
        assert_eq!(h.update(1, MAX_TIMESTAMP), None);
        assert_eq!(h.watermark(), 20);
        assert_eq!(h.update(0, MAX_TIMESTAMP), Some(MAX_TIMESTAMP));
    }

    #[test]
    fn ended_partition_is_never_idle() {
        let mut w = PartitionWatermark::new_at(&config(0, Some(10), None), 0);
        assert!(w.is_idle(100));
        w.mark_ended();
        assert!(!w.is_idle(1_000));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Update(usize, Timestamp),
        Idle(usize, bool),
    }

    fn op(inputs: usize) -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..inputs, prop_oneof![
                8 => -1_000i64..1_000,
                1 => Just(MIN_TIMESTAMP),
                1 => Just(MAX_TIMESTAMP),
            ])
                .prop_map(|(i, w)| Op::Update(i, w)),
            1 => (0..inputs, any::<bool>()).prop_map(|(i, b)| Op::Idle(i, b)),
        ]
    }

    proptest! {
        #[test]
        fn holder_is_monotone_and_bounded_by_active_inputs(
            (n, ops) in (1usize..5).prop_flat_map(|n| (Just(n), proptest::collection::vec(op(n), 0..60)))
        ) {
            let mut h = WatermarkHolder::new(n);
            let mut model: Vec<(Timestamp, bool)> = vec![(MIN_TIMESTAMP, false); n];
            // Inputs that have been idle at some point may legitimately sit behind the
            // combined watermark (their events are late); the others never do.
            let mut ever_idle = vec![false; n];
            let mut previous = h.watermark();
            for op in ops {
                let reported = match op {
                    Op::Update(i, w) => {
                        model[i].0 = model[i].0.max(w);
                        h.update(i, w)
                    }
                    Op::Idle(i, b) => {
                        model[i].1 = b;
                        ever_idle[i] |= b;
                        h.set_idle(i, b)
                    }
                };
                let now = h.watermark();
                prop_assert!(now >= previous, "combined went back from {} to {}", previous, now);
                prop_assert_eq!(reported.is_some(), now > previous);
                if let Some(w) = reported {
                    prop_assert_eq!(w, now);
                    // An advance never passes any input active at that moment.
                    for &(wm, idle) in &model {
                        prop_assert!(idle || now <= wm);
                    }
                }
                for (i, &(wm, idle)) in model.iter().enumerate() {
                    if !idle && !ever_idle[i] {
                        prop_assert!(now <= wm, "combined {} above active input {} at {}", now, i, wm);
                    }
                }
                previous = now;
            }
        }

        #[test]
        fn partition_watermark_is_monotone(times in proptest::collection::vec(any::<i64>(), 0..50), ooo in 0u64..10_000) {
            let mut w = PartitionWatermark::new(&config(ooo, None, None));
            let mut prev = w.watermark();
            for t in times {
                w.observe(t, 0);
                prop_assert!(w.watermark() >= prev);
                prev = w.watermark();
            }
        }
    }
}

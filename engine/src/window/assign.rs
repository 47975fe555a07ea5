//! Window and pane arithmetic for tumbling and sliding windows.
//!
//! Window `j` is `[j·D, j·D + S)`; panes are `[k·P, k·P + P)` with `P = gcd(S, D)`, so every
//! window boundary is a pane boundary and the windows containing an event are exactly the
//! windows containing its pane. Arithmetic is done in `i128` and clamped, so extreme input
//! times cannot overflow.

use crate::event::Timestamp;

/// Sizes of a tumbling (`slide == size`) or sliding window, in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// Window size `S`.
    pub size: i64,
    /// Slide `D`.
    pub slide: i64,
    /// Pane width `P = gcd(S, D)`.
    pub pane: i64,
    /// Allowed lateness `L`.
    pub lateness: i64,
}

fn clamp(x: i128) -> i64 {
    x.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// `⌊(x − y) / d⌋ + 1`, in `i64` when nothing overflows (the hot path), else in `i128`.
#[inline]
fn first_after(x: i64, y: i64, d: i64) -> i64 {
    match x.checked_sub(y) {
        Some(v) => v.div_euclid(d).saturating_add(1),
        None => clamp((i128::from(x) - i128::from(y)).div_euclid(i128::from(d)) + 1),
    }
}

fn gcd(mut a: i64, mut b: i64) -> i64 {
    while b != 0 {
        let r = a % b;
        a = b;
        b = r;
    }
    a.max(1)
}

impl Geometry {
    /// Sizes must be positive (the caller clamps them to at least 1 ms).
    pub fn new(size: i64, slide: i64, lateness: i64) -> Self {
        let size = size.max(1);
        let slide = slide.max(1);
        Geometry {
            size,
            slide,
            pane: gcd(size, slide),
            lateness: lateness.max(0),
        }
    }

    /// Whether every pane is a whole window.
    pub fn is_tumbling(&self) -> bool {
        self.size == self.slide
    }

    /// Start of the pane holding `t`.
    #[inline]
    pub fn pane_start(&self, t: Timestamp) -> Timestamp {
        let p = self.pane;
        t.div_euclid(p)
            .checked_mul(p)
            .unwrap_or_else(|| clamp(i128::from(t.div_euclid(p)) * i128::from(p)))
    }

    /// End of the pane starting at `start`.
    pub fn pane_end(&self, start: Timestamp) -> Timestamp {
        start.saturating_add(self.pane)
    }

    /// Start of window `j`.
    #[inline]
    pub fn start(&self, j: i64) -> Timestamp {
        j.checked_mul(self.slide)
            .unwrap_or_else(|| clamp(i128::from(j) * i128::from(self.slide)))
    }

    /// End (exclusive) of window `j`.
    #[inline]
    pub fn end(&self, j: i64) -> Timestamp {
        j.checked_mul(self.slide)
            .and_then(|s| s.checked_add(self.size))
            .unwrap_or_else(|| {
                clamp(i128::from(j) * i128::from(self.slide) + i128::from(self.size))
            })
    }

    /// Purge time of window `j`: its end plus the allowed lateness.
    pub fn purge_time(&self, j: i64) -> Timestamp {
        self.end(j).saturating_add(self.lateness)
    }

    /// The windows `[lo, hi]` containing time `t` (empty, `lo > hi`, only if the slide
    /// exceeds the size and `t` falls between windows).
    pub fn windows_of(&self, t: Timestamp) -> (i64, i64) {
        let hi = t.div_euclid(self.slide);
        let lo =
            clamp((i128::from(t) - i128::from(self.size)).div_euclid(i128::from(self.slide)) + 1);
        (lo, hi)
    }

    /// The first window whose end is greater than `x`.
    #[inline]
    pub fn first_end_after(&self, x: Timestamp) -> i64 {
        first_after(x, self.size, self.slide)
    }

    /// The first window whose purge time is greater than `x`: the first window a record seen
    /// at watermark `x` is not late for.
    #[inline]
    pub fn first_purge_after(&self, x: Timestamp) -> i64 {
        match self.size.checked_add(self.lateness) {
            Some(y) => first_after(x, y, self.slide),
            None => clamp(
                (i128::from(x) - i128::from(self.size) - i128::from(self.lateness))
                    .div_euclid(i128::from(self.slide))
                    + 1,
            ),
        }
    }

    /// When the pane starting at `start` can be dropped: the purge time of its last window.
    pub fn pane_drop_time(&self, start: Timestamp) -> Timestamp {
        self.purge_time(self.windows_of(start).1)
    }

    /// The next time after `w` at which a window containing the pane fires or is purged
    /// (`MAX` if none).
    pub fn pane_next_due(&self, start: Timestamp, w: Timestamp) -> Timestamp {
        let (lo, hi) = self.windows_of(start);
        let mut due = Timestamp::MAX;
        let j = self.first_end_after(w).max(lo);
        if j <= hi {
            due = due.min(self.end(j));
        }
        let j = self.first_purge_after(w).max(lo);
        if j <= hi {
            due = due.min(self.purge_time(j));
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tumbling_assignment_handles_negative_times() {
        let g = Geometry::new(10, 10, 0);
        assert_eq!(g.windows_of(-1), (-1, -1));
        assert_eq!((g.start(-1), g.end(-1)), (-10, 0));
        assert_eq!(g.windows_of(0), (0, 0));
        assert_eq!(g.windows_of(9), (0, 0));
        assert_eq!(g.pane_start(-11), -20);
    }

    #[test]
    fn sliding_windows_and_panes() {
        // size 10, slide 4: panes of 2.
        let g = Geometry::new(10, 4, 0);
        assert_eq!(g.pane, 2);
        // t = 9 is in [0,10), [4,14), [8,18).
        assert_eq!(g.windows_of(9), (0, 2));
        // t = 0 is in [-8,2), [-4,6), [0,10).
        assert_eq!(g.windows_of(0), (-2, 0));
        assert_eq!(g.first_end_after(10), 1);
        assert_eq!(g.first_end_after(9), 0);
        assert_eq!(g.pane_drop_time(8), 18);
        assert_eq!(g.pane_next_due(8, 10), 14);
    }

    #[test]
    fn extreme_times_do_not_overflow() {
        let g = Geometry::new(7, 3, i64::MAX);
        for t in [i64::MIN, i64::MAX, 0] {
            let (lo, hi) = g.windows_of(t);
            let _ = (g.start(lo), g.end(hi), g.purge_time(hi), g.pane_start(t));
            let _ = g.pane_next_due(g.pane_start(t), t);
        }
    }
}

//! Half-open address ranges and sets of them (the instrumented ranges).

use crate::state::Rword;
use std::fmt;

/// A half-open range of addresses `[start, end)`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Range {
    /// First address in the range.
    pub start: Rword,
    /// First address after the range.
    pub end: Rword,
}

impl Range {
    /// The range `[start, end)`.
    #[must_use]
    pub const fn new(start: Rword, end: Rword) -> Self {
        Range { start, end }
    }

    /// Number of addresses in the range (0 if empty or inverted).
    #[must_use]
    pub const fn size(&self) -> Rword {
        self.end.saturating_sub(self.start)
    }

    /// Whether `addr` is inside.
    #[must_use]
    pub const fn contains(&self, addr: Rword) -> bool {
        self.start <= addr && addr < self.end
    }

    /// Whether the two ranges share at least one address.
    #[must_use]
    pub const fn overlaps(&self, other: &Range) -> bool {
        self.start < other.end && other.start < self.end
    }

    /// Whether the range holds no address.
    #[must_use]
    pub const fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

impl fmt::Debug for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}, {:#x})", self.start, self.end)
    }
}

/// A set of addresses kept as sorted, disjoint, non-adjacent ranges.
#[derive(Clone, Default, PartialEq, Eq, Debug)]
pub struct RangeSet {
    ranges: Vec<Range>,
}

impl RangeSet {
    /// The empty set.
    #[must_use]
    pub const fn new() -> Self {
        RangeSet { ranges: Vec::new() }
    }

    /// The ranges, sorted and disjoint.
    #[must_use]
    pub fn ranges(&self) -> &[Range] {
        &self.ranges
    }

    /// Whether the set holds no address.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Total number of addresses in the set.
    #[must_use]
    pub fn size(&self) -> Rword {
        self.ranges.iter().map(Range::size).sum()
    }

    /// The range of the set that contains `addr`.
    #[must_use]
    pub fn range_containing(&self, addr: Rword) -> Option<Range> {
        let i = self.ranges.partition_point(|r| r.end <= addr);
        self.ranges.get(i).filter(|r| r.contains(addr)).copied()
    }

    /// Whether `addr` is in the set.
    #[must_use]
    pub fn contains(&self, addr: Rword) -> bool {
        self.range_containing(addr).is_some()
    }

    /// Whether every address of `r` is in the set.
    #[must_use]
    pub fn contains_range(&self, r: Range) -> bool {
        r.is_empty()
            || self
                .range_containing(r.start)
                .is_some_and(|c| r.end <= c.end)
    }

    /// Whether some address of `r` is in the set.
    #[must_use]
    pub fn overlaps(&self, r: Range) -> bool {
        let i = self.ranges.partition_point(|x| x.end <= r.start);
        self.ranges.get(i).is_some_and(|x| x.overlaps(&r))
    }

    /// Adds every address of `r` (empty ranges are ignored).
    pub fn add(&mut self, r: Range) {
        if r.is_empty() {
            return;
        }
        // Ranges that touch or overlap `r` merge with it.
        let first = self.ranges.partition_point(|x| x.end < r.start);
        let last = self.ranges.partition_point(|x| x.start <= r.end);
        let mut merged = r;
        if first < last {
            merged.start = merged.start.min(self.ranges[first].start);
            merged.end = merged.end.max(self.ranges[last - 1].end);
        }
        self.ranges.splice(first..last, [merged]);
    }

    /// Removes every address of `r`.
    pub fn remove(&mut self, r: Range) {
        if r.is_empty() {
            return;
        }
        let mut out = Vec::with_capacity(self.ranges.len() + 1);
        for x in &self.ranges {
            if !x.overlaps(&r) {
                out.push(*x);
                continue;
            }
            if x.start < r.start {
                out.push(Range::new(x.start, r.start));
            }
            if r.end < x.end {
                out.push(Range::new(r.end, x.end));
            }
        }
        self.ranges = out;
    }

    /// Removes everything.
    pub fn clear(&mut self) {
        self.ranges.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_merges_overlapping_and_adjacent_ranges() {
        let mut s = RangeSet::new();
        s.add(Range::new(10, 20));
        s.add(Range::new(30, 40));
        s.add(Range::new(20, 30));
        assert_eq!(s.ranges(), &[Range::new(10, 40)]);
        s.add(Range::new(50, 60));
        s.add(Range::new(5, 12));
        assert_eq!(s.ranges(), &[Range::new(5, 40), Range::new(50, 60)]);
        assert_eq!(s.size(), 45);
    }

    #[test]
    fn remove_splits_ranges() {
        let mut s = RangeSet::new();
        s.add(Range::new(0, 100));
        s.remove(Range::new(10, 20));
        s.remove(Range::new(90, 200));
        assert_eq!(s.ranges(), &[Range::new(0, 10), Range::new(20, 90)]);
        assert!(s.contains(9) && !s.contains(10) && s.contains(20) && !s.contains(90));
        assert!(s.contains_range(Range::new(20, 90)) && !s.contains_range(Range::new(5, 25)));
        assert!(s.overlaps(Range::new(5, 25)) && !s.overlaps(Range::new(10, 20)));
    }

    #[test]
    fn empty_ranges_are_ignored() {
        let mut s = RangeSet::new();
        s.add(Range::new(10, 10));
        s.add(Range::new(10, 5));
        assert!(s.is_empty());
    }
}

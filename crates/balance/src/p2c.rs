//! Power of two choices over a snapshot of candidates (Mitzenmacher; Linkerd's `linkerd/pool/p2c`):
//! draw two distinct endpoints at random and take the cheaper. It spreads load almost as well
//! as always taking the cheapest, without the herd: every picker taking the one cheapest
//! endpoint at the same moment would all pile onto it, and the random pair breaks that
//! symmetry. Cost is latency estimate × (requests in flight + 1), so a fast endpoint takes
//! more traffic until its queue makes it as expensive as a slow idle one.
//!
//! Rules:
//! - ejected candidates are never drawn while one in rotation exists;
//! - one candidate in rotation: it;
//! - equal costs: a `preferred` candidate wins (the manager: an instance on the proxy's own
//!   host; in practice this decides between endpoints not yet measured);
//! - every candidate ejected: the least bad one, the one due back soonest, then the cheapest
//!   (the manager's rule: "a 503 helps nobody");
//! - no candidates: `None`.
//!
//! The random source is the caller's ([`RandomSource`]), so tests are deterministic.

use std::cmp::Ordering;
use std::time::Duration;

/// One endpoint's state as the pick sees it (see [`crate::Endpoint::candidate`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// The caller's name for the endpoint (an index into its own list).
    pub id: usize,
    /// Latency estimate.
    pub estimate: Duration,
    /// Requests in flight to it.
    pub in_flight: u32,
    /// `None` in rotation; else the backoff still to run (zero: due for a probe).
    pub ejected_for: Option<Duration>,
    /// Wins ties.
    pub preferred: bool,
}

impl Candidate {
    /// Expected wait for a new request here, in seconds: estimate × (in flight + 1).
    pub fn cost(&self) -> f64 {
        self.estimate.as_secs_f64() * (f64::from(self.in_flight) + 1.0)
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected_for.is_some()
    }
}

/// A source of uniform random indices.
pub trait RandomSource {
    /// A number in `0..bound` (`bound >= 1`). Values outside are reduced modulo `bound`.
    fn below(&mut self, bound: usize) -> usize;
}

impl<F: FnMut(usize) -> usize> RandomSource for F {
    fn below(&mut self, bound: usize) -> usize {
        self(bound)
    }
}

/// The index in `candidates` of the one to send the next request to; `None` if empty.
pub fn pick(candidates: &[Candidate], random: &mut impl RandomSource) -> Option<usize> {
    let in_rotation = candidates.iter().filter(|c| !c.is_ejected()).count();
    match in_rotation {
        0 => least_bad(candidates),
        1 => candidates.iter().position(|c| !c.is_ejected()),
        count => {
            let (first, second) = two_distinct(count, random);
            let a = nth_in_rotation(candidates, first);
            let b = nth_in_rotation(candidates, second);
            Some(cheaper(candidates, a, b))
        }
    }
}

/// Two distinct numbers in `0..count` (`count >= 2`), uniformly.
fn two_distinct(count: usize, random: &mut impl RandomSource) -> (usize, usize) {
    let first = random.below(count) % count;
    let mut second = random.below(count - 1) % (count - 1);
    if second >= first {
        second += 1;
    }
    (first, second)
}

fn nth_in_rotation(candidates: &[Candidate], n: usize) -> usize {
    candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| !c.is_ejected())
        .nth(n)
        .map(|(index, _)| index)
        .expect("n is below the count of candidates in rotation")
}

/// The cheaper of `a` and `b`; on a tie the preferred one, else `a`.
fn cheaper(candidates: &[Candidate], a: usize, b: usize) -> usize {
    let (ca, cb) = (&candidates[a], &candidates[b]);
    match ca.cost().total_cmp(&cb.cost()) {
        Ordering::Less => a,
        Ordering::Greater => b,
        Ordering::Equal if cb.preferred && !ca.preferred => b,
        Ordering::Equal => a,
    }
}

fn least_bad(candidates: &[Candidate]) -> Option<usize> {
    let rank = |c: &Candidate| (c.ejected_for.unwrap_or(Duration::ZERO), !c.preferred);
    candidates
        .iter()
        .enumerate()
        .min_by(|(_, x), (_, y)| {
            let (x_left, x_far) = rank(x);
            let (y_left, y_far) = rank(y);
            x_left
                .cmp(&y_left)
                .then(x.cost().total_cmp(&y.cost()))
                .then(x_far.cmp(&y_far))
        })
        .map(|(index, _)| index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn up(id: usize, estimate_ms: u64, in_flight: u32) -> Candidate {
        Candidate {
            id,
            estimate: Duration::from_millis(estimate_ms),
            in_flight,
            ejected_for: None,
            preferred: false,
        }
    }

    fn ejected(id: usize, estimate_ms: u64, left_ms: u64) -> Candidate {
        Candidate {
            ejected_for: Some(Duration::from_millis(left_ms)),
            ..up(id, estimate_ms, 0)
        }
    }

    /// A random source that returns the given numbers in turn.
    fn scripted(numbers: &[usize]) -> impl FnMut(usize) -> usize + '_ {
        let mut next = numbers.iter().cycle();
        move |_| *next.next().expect("cycle")
    }

    #[test]
    fn the_cheaper_of_the_two_drawn_wins() {
        let candidates = [up(0, 50, 0), up(1, 10, 0), up(2, 1, 0)];
        // Draws 0 then 1 (of the remaining two: index 1).
        assert_eq!(pick(&candidates, &mut scripted(&[0, 0])), Some(1));
        // Draws 2 then 0.
        assert_eq!(pick(&candidates, &mut scripted(&[2, 0])), Some(2));
    }

    #[test]
    fn requests_in_flight_make_a_fast_endpoint_expensive() {
        // 10 ms with 5 in flight costs 60 ms; 50 ms idle costs 50 ms.
        let candidates = [up(0, 10, 5), up(1, 50, 0)];
        assert_eq!(pick(&candidates, &mut scripted(&[0, 0])), Some(1));
        let candidates = [up(0, 10, 3), up(1, 50, 0)];
        assert_eq!(pick(&candidates, &mut scripted(&[0, 0])), Some(0));
    }

    #[test]
    fn an_ejected_endpoint_is_never_picked_while_one_is_in_rotation() {
        // Ejected ones are far cheaper, and one is due for a probe: still not drawn.
        let candidates = [
            ejected(0, 1, 5000),
            up(1, 900, 40),
            ejected(2, 1, 0),
            up(3, 800, 40),
        ];
        for draw in 0..2 {
            assert_eq!(pick(&candidates, &mut scripted(&[draw, 0])), Some(3));
        }
        assert_eq!(pick(&candidates[..3], &mut scripted(&[0, 0])), Some(1));
    }

    #[test]
    fn a_tie_goes_to_the_preferred_candidate() {
        let mut local = up(1, 100, 0);
        local.preferred = true;
        let candidates = [up(0, 100, 0), local];
        assert_eq!(pick(&candidates, &mut scripted(&[0, 0])), Some(1));
        assert_eq!(pick(&candidates, &mut scripted(&[1, 0])), Some(1));
        // Not a tie: the cheaper wins even if remote.
        let candidates = [up(0, 99, 0), local];
        assert_eq!(pick(&candidates, &mut scripted(&[1, 0])), Some(0));
    }

    #[test]
    fn all_ejected_picks_the_one_due_back_soonest_then_the_cheapest() {
        let candidates = [
            ejected(0, 1, 9000),
            ejected(1, 500, 100),
            ejected(2, 400, 100),
        ];
        assert_eq!(pick(&candidates, &mut scripted(&[0])), Some(2));
    }

    #[test]
    fn one_candidate_is_picked_and_none_is_none() {
        assert_eq!(pick(&[ejected(0, 1, 1)], &mut scripted(&[0])), Some(0));
        assert_eq!(pick(&[up(0, 1, 1)], &mut scripted(&[0])), Some(0));
        assert_eq!(pick(&[], &mut scripted(&[0])), None);
    }

    #[test]
    fn out_of_range_random_numbers_are_reduced_not_trusted() {
        let candidates = [up(0, 5, 0), up(1, 1, 0)];
        assert_eq!(pick(&candidates, &mut scripted(&[7, 99])), Some(1));
    }

    fn candidate() -> impl Strategy<Value = Candidate> {
        (
            0u64..2000,
            0u32..20,
            prop::option::weighted(0.3, 0u64..10_000),
            any::<bool>(),
        )
            .prop_map(
                |(estimate_ms, in_flight, ejected_ms, preferred)| Candidate {
                    id: 0,
                    estimate: Duration::from_millis(estimate_ms),
                    in_flight,
                    ejected_for: ejected_ms.map(Duration::from_millis),
                    preferred,
                },
            )
    }

    proptest! {
        #[test]
        fn the_pick_is_the_cheaper_of_the_two_drawn_and_never_ejected_if_avoidable(
            candidates in prop::collection::vec(candidate(), 1..12),
            seed in prop::collection::vec(any::<usize>(), 2),
        ) {
            let mut drawn = Vec::new();
            let mut random = |bound: usize| {
                let n = seed[drawn.len() % 2] % bound;
                drawn.push(n);
                n
            };
            let picked = pick(&candidates, &mut random).expect("not empty");
            let in_rotation: Vec<usize> =
                (0..candidates.len()).filter(|&i| !candidates[i].is_ejected()).collect();
            if in_rotation.is_empty() {
                return Ok(());
            }
            prop_assert!(!candidates[picked].is_ejected());
            if in_rotation.len() >= 2 {
                let a = in_rotation[drawn[0]];
                let mut second = drawn[1];
                if second >= drawn[0] { second += 1; }
                let b = in_rotation[second];
                prop_assert!(a != b);
                prop_assert!(picked == a || picked == b);
                let cheapest = candidates[a].cost().min(candidates[b].cost());
                prop_assert_eq!(candidates[picked].cost(), cheapest);
            }
        }

        #[test]
        fn every_candidate_in_rotation_can_be_drawn(
            count in 2usize..10,
            target in 0usize..10,
        ) {
            // Equal costs: the pick is the first drawn, so the draws reach every index.
            let target = target % count;
            let candidates: Vec<Candidate> = (0..count).map(|i| up(i, 10, 0)).collect();
            let picked = pick(&candidates, &mut scripted(&[target, 0]));
            prop_assert_eq!(picked, Some(target));
        }
    }
}

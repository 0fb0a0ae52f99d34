//! The fast rebooking heuristic. Services are solved one after another (chemotherapy,
//! inpatient, day case, outpatient), appointments in greedy order: priority, then
//! deadline pathway (breached first, then by deadline), then earliest allowed start,
//! longest first.
//!
//! **Moderate services** (up to `ssp_pairs` feasible pairs; every service of the
//! 709-appointment backlog) use successive shortest augmenting paths, i.e. the
//! Hungarian method with Dijkstra on reduced costs: each appointment joins by the
//! cheapest chain "take a slot, its holder moves to another, ..., the last mover takes
//! a free slot". Processing by priority with "join if a path exists" is the matroid
//! greedy for the lexicographic placement tier; shortest paths keep the placed set at
//! minimum cost (tiers 2 and 3 folded into one exact integer). When no free slot can
//! be reached, the cheapest exchange with a placed appointment of the same class
//! (priority, deadline pathway) is taken if it lowers the cost.
//!
//! **Large services** (the 12,000 outpatients) use a greedy: each appointment takes its
//! cheapest free feasible slot (within the allowed window the cost is non-decreasing in
//! time except one step down at the reasonable-notice boundary, so that is the first
//! feasible free slot or the first one after the boundary: two scans of a slot list
//! sorted by start, skipping taken slots with a bitset); if none, a bounded
//! breadth-first augmenting path search, remembering saturated regions. Then moves to
//! cheaper free slots, pairwise swaps that lower the cost, and retries, for a few rounds.
//!
//! Finally, an appointment blocked only by the same patient's rebooking in another
//! service gets a slot by moving that rebooking.

use crate::model::{Category, Instance, Solution};
use crate::prep::{FreeSet, Prepared};

/// Knobs for the heuristic. The defaults are what `solve` uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeuristicOptions {
    /// Services whose appointments have at most this many feasible (appointment,
    /// slot) pairs are solved with successive shortest paths; larger ones with the
    /// greedy + augmenting paths + moves and swaps.
    pub ssp_pairs: usize,
    /// Search augmenting paths when an appointment finds no free slot (greedy mode).
    pub augment: bool,
    /// Slots one augmenting-path search may visit before giving up.
    pub augment_visits: usize,
    /// Run moves and swaps after the greedy.
    pub improve: bool,
    /// Upper bound on swap candidates (pairs whose swap would lower the cost) checked
    /// for feasibility in swap passes.
    pub swap_budget: u64,
    /// Upper bound on improvement rounds.
    pub improve_rounds: usize,
}

impl Default for HeuristicOptions {
    fn default() -> Self {
        HeuristicOptions {
            ssp_pairs: 1_000_000,
            augment: true,
            augment_visits: 4_000,
            improve: true,
            swap_budget: 50_000_000,
            improve_rounds: 3,
        }
    }
}

/// Rebooks with the heuristic and default options.
pub fn solve(inst: &Instance) -> Solution {
    solve_with(inst, &HeuristicOptions::default())
}

/// Rebooks with the heuristic.
pub fn solve_with(inst: &Instance, opts: &HeuristicOptions) -> Solution {
    let p = Prepared::new(inst);
    let assign = assign(&p, opts);
    p.build_solution(&assign)
}

pub(crate) fn assign(p: &Prepared<'_>, opts: &HeuristicOptions) -> Vec<Option<usize>> {
    let mut st = State::new(p);
    let order = greedy_order(p);
    // Most time-critical services first (they matter most when a patient's
    // appointments in two services clash).
    let services = [
        Category::Chemotherapy,
        Category::InpatientProcedure,
        Category::DayCase,
        Category::Outpatient,
    ];
    let mut large = Vec::new();
    for c in services {
        let apps: Vec<usize> = order.iter().copied().filter(|&a| p.apps[a].category == c).collect();
        if apps.is_empty() {
            continue;
        }
        match st.feasible_lists(&apps, opts.ssp_pairs) {
            Some(feas) => st.shortest_paths(c, &apps, &feas),
            None => {
                for &a in &apps {
                    st.place_or_augment(a, opts);
                }
                large.push(apps);
            }
        }
    }
    if opts.improve {
        let mut swap_budget = opts.swap_budget;
        for apps in &large {
            for _ in 0..opts.improve_rounds {
                let before = st.totals();
                st.move_pass(apps);
                st.swap_pass(apps, &mut swap_budget);
                st.move_pass(apps);
                for &a in apps {
                    if st.assign[a].is_none() {
                        st.place_or_augment(a, opts);
                    }
                }
                if st.totals() >= before {
                    break;
                }
            }
        }
    }
    // Same-patient clashes across services: move a sibling to make room; then a last
    // look for free slots that opened on the way.
    for &a in &order {
        if st.assign[a].is_none() && !st.repair_clash(a, 32) {
            if let Some(s) = st.best_free(a) {
                st.place(a, s);
            }
        }
    }
    st.assign
}

/// Appointment indexes in greedy order.
pub(crate) fn greedy_order(p: &Prepared<'_>) -> Vec<usize> {
    let inst = p.inst;
    let mut order: Vec<usize> = (0..p.apps.len()).filter(|&a| p.apps[a].invalid.is_none()).collect();
    order.sort_by_key(|&a| {
        let info = &p.apps[a];
        let urgency = if !info.allowed.breached.is_empty() {
            i64::MIN
        } else {
            info.allowed.until_ms.unwrap_or(i64::MAX)
        };
        (
            info.priority_index,
            urgency,
            info.allowed.from_ms,
            std::cmp::Reverse(info.dur_ms),
            inst.appointments[a].original_start_ms,
            inst.appointments[a].id.as_str(),
        )
    });
    order
}

struct State<'p, 'a> {
    p: &'p Prepared<'a>,
    assign: Vec<Option<usize>>,
    holder: Vec<Option<usize>>,
    free: [FreeSet; 4],
    by_patient: Vec<Vec<usize>>,
    /// Bumped whenever an appointment leaves a slot; `dead[s] == epoch` means no
    /// augmenting path runs through slot `s` (learnt from a failed search).
    epoch: u32,
    dead: Vec<u32>,
    /// Per-search stamps.
    stamp: u32,
    seen_slot: Vec<u32>,
    seen_app: Vec<u32>,
    via: Vec<usize>,
    came: Vec<usize>,
}

type Key = i128;
const NONE: usize = usize::MAX;

impl<'p, 'a> State<'p, 'a> {
    fn new(p: &'p Prepared<'a>) -> Self {
        State {
            p,
            assign: vec![None; p.apps.len()],
            holder: vec![None; p.slots.len()],
            free: std::array::from_fn(|c| FreeSet::all_free(p.by_cat[c].len())),
            by_patient: vec![Vec::new(); p.n_patients],
            epoch: 1,
            dead: vec![0; p.slots.len()],
            stamp: 0,
            seen_slot: vec![0; p.slots.len()],
            seen_app: vec![0; p.apps.len()],
            via: vec![NONE; p.slots.len()],
            came: vec![NONE; p.apps.len()],
        }
    }

    fn cat(&self, a: usize) -> Category {
        self.p.apps[a].category
    }

    fn place(&mut self, a: usize, s: usize) {
        debug_assert!(self.holder[s].is_none() && self.assign[a].is_none());
        self.assign[a] = Some(s);
        self.holder[s] = Some(a);
        let c = self.p.slots[s].category.index();
        self.free[c].set_free(self.p.slots[s].pos, false);
        self.by_patient[self.p.apps[a].patient as usize].push(a);
    }

    fn unplace(&mut self, a: usize) -> Option<usize> {
        let s = self.assign[a].take()?;
        self.epoch += 1;
        self.holder[s] = None;
        let c = self.p.slots[s].category.index();
        self.free[c].set_free(self.p.slots[s].pos, true);
        let list = &mut self.by_patient[self.p.apps[a].patient as usize];
        if let Some(i) = list.iter().position(|&x| x == a) {
            list.swap_remove(i);
        }
        Some(s)
    }

    /// `a` in `s` would overlap another rebooked appointment of the same patient.
    fn clash_placed(&self, a: usize, s: usize) -> bool {
        self.by_patient[self.p.apps[a].patient as usize]
            .iter()
            .any(|&b| b != a && self.assign[b].is_some_and(|sb| self.p.pair_clash(a, s, b, sb)))
    }

    /// Hard-feasible for `a`, ignoring who holds `s`.
    fn ok(&self, a: usize, s: usize) -> bool {
        self.p.feasible(a, s) && !self.clash_placed(a, s)
    }

    fn key(&self, a: usize, s: usize) -> (i64, i64) {
        (self.p.cost(a, s), self.p.start_minutes(s))
    }

    /// Tiers 2 and 3 folded into one exact integer (tier 3 < 2^40 per slot).
    fn key128(&self, a: usize, s: usize) -> Key {
        ((self.p.cost(a, s) as Key) << 40) + self.p.start_minutes(s) as Key
    }

    /// The first free slot at or after position `pos` that is feasible for `a`.
    fn first_free_from(&self, a: usize, mut pos: usize) -> Option<usize> {
        let c = self.cat(a).index();
        let until = self.p.apps[a].allowed.until_ms;
        let list = &self.p.by_cat[c];
        while let Some(q) = self.free[c].next_free(pos) {
            let s = list[q];
            if until.is_some_and(|u| self.p.slots[s].start >= u) {
                return None;
            }
            if self.ok(a, s) {
                return Some(s);
            }
            pos = q + 1;
        }
        None
    }

    /// The cheapest free feasible slot for `a`.
    fn best_free(&self, a: usize) -> Option<usize> {
        let info = &self.p.apps[a];
        if info.invalid.is_some() || info.allowed.closed {
            return None;
        }
        let lo = self.p.pos_at(info.category, info.allowed.from_ms);
        let s1 = self.first_free_from(a, lo)?;
        if self.p.short_notice(a, s1) {
            let lo2 = self
                .p
                .pos_at(info.category, self.p.notice_from_ms)
                .max(self.p.slots[s1].pos + 1);
            if let Some(s2) = self.first_free_from(a, lo2) {
                if self.key(a, s2) < self.key(a, s1) {
                    return Some(s2);
                }
            }
        }
        Some(s1)
    }

    fn place_or_augment(&mut self, a: usize, opts: &HeuristicOptions) -> bool {
        if let Some(s) = self.best_free(a) {
            self.place(a, s);
            return true;
        }
        opts.augment && self.augment(a, opts.augment_visits)
    }

    /// Breadth-first search for an augmenting path: `u` takes a slot whose holder
    /// moves to another feasible slot, whose holder moves on, ..., until someone
    /// moves into a free slot. Nobody already placed is dropped. A failed search
    /// marks every slot it reached as dead until the next time someone leaves a slot.
    fn augment(&mut self, u: usize, max_visits: usize) -> bool {
        let info = &self.p.apps[u];
        let c = info.category.index();
        if info.invalid.is_some() || info.allowed.closed || !self.free[c].any() {
            return false;
        }
        self.stamp += 1;
        let stamp = self.stamp;
        let mut visited: Vec<usize> = Vec::new();
        let mut queue = std::collections::VecDeque::new();
        self.seen_app[u] = stamp;
        self.came[u] = NONE;
        queue.push_back(u);
        let mut found = None;
        'bfs: while let Some(x) = queue.pop_front() {
            let xi = &self.p.apps[x];
            let lo = self.p.pos_at(xi.category, xi.allowed.from_ms);
            for &s in &self.p.by_cat[c][lo..] {
                if xi.allowed.until_ms.is_some_and(|t| self.p.slots[s].start >= t) {
                    break;
                }
                if self.seen_slot[s] == stamp || self.dead[s] == self.epoch || !self.ok(x, s) {
                    continue;
                }
                self.seen_slot[s] = stamp;
                self.via[s] = x;
                visited.push(s);
                match self.holder[s] {
                    None => {
                        found = Some(s);
                        break 'bfs;
                    }
                    Some(b) if self.seen_app[b] != stamp => {
                        self.seen_app[b] = stamp;
                        self.came[b] = s;
                        queue.push_back(b);
                    }
                    Some(_) => {}
                }
                if visited.len() >= max_visits {
                    return false;
                }
            }
        }
        let Some(mut s) = found else {
            for s in visited {
                self.dead[s] = self.epoch;
            }
            return false;
        };
        // Walk back: each mover takes `s`, freeing the slot it came through.
        let mut moves = Vec::new();
        loop {
            let x = self.via[s];
            moves.push((x, s));
            if x == u {
                break;
            }
            s = self.came[x];
        }
        self.apply_moves(&moves)
    }

    /// Moves each `(appointment, slot)` together; reverts and returns false if the
    /// result breaks a patient-clash rule (possible only when two movers share a patient).
    fn apply_moves(&mut self, moves: &[(usize, usize)]) -> bool {
        let old: Vec<Option<usize>> = moves.iter().map(|&(x, _)| self.assign[x]).collect();
        for &(x, _) in moves {
            self.unplace(x);
        }
        for &(x, s) in moves {
            self.place(x, s);
        }
        if moves.iter().all(|&(x, s)| !self.clash_placed(x, s)) {
            return true;
        }
        for &(x, _) in moves {
            self.unplace(x);
        }
        for (&(x, _), o) in moves.iter().zip(old) {
            if let Some(s) = o {
                self.place(x, s);
            }
        }
        false
    }

    /// Static feasible slots (service, length, practitioner, location, window, fixed
    /// clashes) of each appointment, or None if there would be more than `max_pairs`.
    fn feasible_lists(&self, apps: &[usize], max_pairs: usize) -> Option<Vec<Vec<usize>>> {
        // Upper bound from window sizes first, to avoid building huge lists.
        let mut bound = 0usize;
        for &a in apps {
            let i = &self.p.apps[a];
            let lo = self.p.pos_at(i.category, i.allowed.from_ms);
            let hi = i.allowed.until_ms.map_or(self.p.by_cat[i.category.index()].len(), |u| {
                self.p.pos_at(i.category, u)
            });
            bound += hi.saturating_sub(lo);
        }
        if bound > max_pairs.saturating_mul(4) {
            return None;
        }
        let mut lists = vec![Vec::new(); self.p.apps.len()];
        let mut total = 0usize;
        for &a in apps {
            let i = &self.p.apps[a];
            if i.invalid.is_some() || i.allowed.closed {
                continue;
            }
            let lo = self.p.pos_at(i.category, i.allowed.from_ms);
            for &s in &self.p.by_cat[i.category.index()][lo..] {
                if i.allowed.until_ms.is_some_and(|u| self.p.slots[s].start >= u) {
                    break;
                }
                if self.p.feasible(a, s) {
                    lists[a].push(s);
                }
            }
            total += lists[a].len();
            if total > max_pairs {
                return None;
            }
        }
        Some(lists)
    }

    /// Successive shortest augmenting paths (the Hungarian method) on one service:
    /// appointments join in greedy order; each takes the cheapest augmenting path
    /// "u takes slot t1, its holder moves to t2, ..., the last mover takes a free
    /// slot", found by Dijkstra on reduced costs with slot potentials. Every
    /// intermediate assignment is then the cheapest (tiers 2 and 3) for the set of
    /// appointments placed so far, ignoring same-patient clashes (which are checked on
    /// every edge and re-validated on every path). A search that reaches no free slot
    /// leaves `u` unplaced and marks what it reached as saturated for good: no later
    /// path can pass through it, since nobody in it ever moves again.
    fn shortest_paths(&mut self, c: Category, apps: &[usize], feas: &[Vec<usize>]) {
        let list = &self.p.by_cat[c.index()];
        let n = list.len();
        let mut pi: Vec<Key> = vec![0; n];
        let mut dead = vec![false; n];
        let mut dist: Vec<Key> = vec![Key::MAX; n];
        let mut pred: Vec<usize> = vec![NONE; n];
        let mut done = vec![false; n];
        let mut touched: Vec<usize> = Vec::new();
        let mut heap = std::collections::BinaryHeap::new();
        for &u in apps {
            if feas[u].is_empty() {
                continue;
            }
            for &q in &touched {
                dist[q] = Key::MAX;
                pred[q] = NONE;
                done[q] = false;
            }
            touched.clear();
            heap.clear();
            for &t in &feas[u] {
                let q = self.p.slots[t].pos;
                if dead[q] || self.clash_placed(u, t) {
                    continue;
                }
                let d = self.key128(u, t) - pi[q];
                if d < dist[q] {
                    if dist[q] == Key::MAX {
                        touched.push(q);
                    }
                    dist[q] = d;
                    pred[q] = NONE;
                    heap.push(std::cmp::Reverse((d, q)));
                }
            }
            let mut found = None;
            while let Some(std::cmp::Reverse((d, q))) = heap.pop() {
                if done[q] || d > dist[q] {
                    continue;
                }
                done[q] = true;
                let t = list[q];
                let Some(x) = self.holder[t] else {
                    found = Some(q);
                    break;
                };
                let base = d - self.key128(x, t) + pi[q];
                for &t2 in &feas[x] {
                    let q2 = self.p.slots[t2].pos;
                    if q2 == q || dead[q2] || done[q2] {
                        continue;
                    }
                    let nd = base + self.key128(x, t2) - pi[q2];
                    if nd < dist[q2] && !self.clash_placed(x, t2) {
                        if dist[q2] == Key::MAX {
                            touched.push(q2);
                        }
                        dist[q2] = nd;
                        pred[q2] = q;
                        heap.push(std::cmp::Reverse((nd, q2)));
                    }
                }
            }
            let mut leaver = None;
            if found.is_none() {
                // No free slot: the cheapest exchange instead, where a placed appointment of
                // the same class (priority, deadline pathway) leaves and `u` enters, if that
                // lowers the cost. Every slot reached stays taken, so all of them are dead.
                let class = |a: usize| (self.p.apps[a].priority_index, self.p.has_deadline(a));
                let mut best: Option<(Key, usize)> = None;
                for &q in &touched {
                    if !done[q] {
                        continue;
                    }
                    if let Some(x) = self.holder[list[q]] {
                        let gain = dist[q] + pi[q] - self.key128(x, list[q]);
                        if class(x) == class(u) && gain < 0 && best.is_none_or(|(g, _)| gain < g) {
                            best = Some((gain, q));
                        }
                    }
                }
                for &q in &touched {
                    dead[q] = true;
                }
                match best {
                    Some((_, q)) => {
                        found = Some(q);
                        leaver = self.holder[list[q]];
                    }
                    None => continue,
                }
            }
            let Some(f) = found else { continue };
            // Potentials: +min(dist, D) keeps every reduced cost non-negative.
            let big = dist[f];
            for (q, p) in pi.iter_mut().enumerate() {
                *p += if dist[q] < big { dist[q] } else { big };
            }
            // Path back from the free slot: each holder moves one step forward.
            let mut moves = Vec::new();
            let mut q = f;
            loop {
                let from = pred[q];
                if from == NONE {
                    moves.push((u, list[q]));
                    break;
                }
                match self.holder[list[from]] {
                    Some(x) => moves.push((x, list[q])),
                    None => break,
                }
                q = from;
            }
            if moves.last().map(|m| m.0) == Some(u) {
                let saved = leaver.and_then(|x| self.unplace(x).map(|s| (x, s)));
                if !self.apply_moves(&moves) {
                    if let Some((x, s)) = saved {
                        self.place(x, s);
                    }
                }
            }
        }
    }

    /// Places `u` in a free feasible slot that only clashes with the patient's other
    /// rebookings, moving those to other free slots; tries at most `attempts` slots.
    fn repair_clash(&mut self, u: usize, attempts: usize) -> bool {
        let info = &self.p.apps[u];
        if info.invalid.is_some() || info.allowed.closed || self.by_patient[info.patient as usize].is_empty() {
            return false;
        }
        let c = info.category.index();
        let mut q = self.p.pos_at(info.category, info.allowed.from_ms);
        let mut tried = 0;
        while let Some(found) = self.free[c].next_free(q) {
            q = found + 1;
            let s = self.p.by_cat[c][found];
            if info.allowed.until_ms.is_some_and(|t| self.p.slots[s].start >= t) {
                return false;
            }
            if !self.p.feasible(u, s) {
                continue;
            }
            let blockers: Vec<(usize, usize)> = self.by_patient[info.patient as usize]
                .iter()
                .filter_map(|&b| self.assign[b].map(|sb| (b, sb)))
                .filter(|&(b, sb)| b != u && self.p.pair_clash(u, s, b, sb))
                .collect();
            tried += 1;
            if tried > attempts {
                return false;
            }
            for &(b, _) in &blockers {
                self.unplace(b);
            }
            self.place(u, s);
            let mut moved = Vec::new();
            for &(b, _) in &blockers {
                match self.best_free(b) {
                    Some(t) => {
                        self.place(b, t);
                        moved.push(b);
                    }
                    None => break,
                }
            }
            if moved.len() == blockers.len() {
                return true;
            }
            for b in moved {
                self.unplace(b);
            }
            self.unplace(u);
            for &(b, sb) in &blockers {
                self.place(b, sb);
            }
        }
        false
    }

    /// Moves each placed appointment to its cheapest free slot if that is cheaper.
    fn move_pass(&mut self, apps: &[usize]) {
        for &a in apps {
            let Some(cur) = self.assign[a] else { continue };
            self.unplace(a);
            let s = match self.best_free(a) {
                Some(s) if self.key(a, s) < self.key(a, cur) => s,
                _ => cur,
            };
            self.place(a, s);
        }
    }

    /// Swaps the slots of two same-service appointments when that lowers the cost.
    /// The inner loop works on a compact copy of what the cost needs.
    fn swap_pass(&mut self, apps: &[usize], budget: &mut u64) {
        let p = self.p;
        let mut placed: Vec<usize> = apps.iter().copied().filter(|&a| self.assign[a].is_some()).collect();
        placed.sort_by_key(|&a| p.slots[self.assign[a].unwrap_or(0)].pos);
        // (slot day, original day, weight, waived) per placed appointment.
        let mut facts: Vec<(i64, i64, i64, bool)> = placed
            .iter()
            .map(|&a| {
                let i = &p.apps[a];
                (p.slots[self.assign[a].unwrap_or(0)].day, i.orig_day, i.weight, i.waived)
            })
            .collect();
        let (now_day, notice, pen) = (p.now_day, p.notice_days, p.short_notice_cost);
        let cost = |(_, orig, w, waived): (i64, i64, i64, bool), day: i64| {
            w * (day - orig).max(0) + if !waived && day - now_day < notice { pen } else { 0 }
        };
        for i in 0..placed.len() {
            let mut fi = facts[i];
            let mut ci = cost(fi, fi.0);
            for j in i + 1..placed.len() {
                let fj = facts[j];
                let delta = cost(fi, fj.0) + cost(fj, fi.0) - ci - cost(fj, fj.0);
                if delta >= 0 {
                    continue;
                }
                if *budget == 0 {
                    return;
                }
                *budget -= 1;
                let (a, b) = (placed[i], placed[j]);
                let (Some(sa), Some(sb)) = (self.assign[a], self.assign[b]) else {
                    continue;
                };
                if p.apps[a].patient != p.apps[b].patient
                    && self.ok(a, sb)
                    && self.ok(b, sa)
                    && self.apply_moves(&[(a, sb), (b, sa)])
                {
                    facts[i].0 = fj.0;
                    facts[j].0 = fi.0;
                    // Keep positions in slot order: position i now holds b, j holds a.
                    placed.swap(i, j);
                    facts.swap(i, j);
                    fi = facts[i];
                    ci = cost(fi, fi.0);
                }
            }
        }
    }

    /// (unplaced by priority, cost, start minutes): smaller is better.
    fn totals(&self) -> ([usize; 4], i64, i64) {
        let mut unplaced = [0usize; 4];
        let (mut cost, mut minutes) = (0, 0);
        for (a, s) in self.assign.iter().enumerate() {
            if self.p.apps[a].invalid.is_some() {
                continue;
            }
            match *s {
                Some(s) => {
                    cost += self.p.cost(a, s);
                    minutes += self.p.start_minutes(s);
                }
                None => unplaced[self.p.apps[a].priority_index] += 1,
            }
        }
        (unplaced, cost, minutes)
    }
}

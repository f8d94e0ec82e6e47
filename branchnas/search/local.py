"""Near-optimal search for many tasks: iterated local search over trees, with a lower bound.

The least-cost tree within a budget for 20-40 tasks (CelebA's 40 attributes) is out of reach
of the exact dynamic programme (Bell(N) partitions per depth), and the paper's beam search
keeps spectral groupings that are balanced where the optimum peels off outlier tasks. This
strategy searches the trees themselves:

- **One move family covers the issue's moves.** A *node* is a group at some depth d (all its
  tasks and its subtree below d), or a single task. Relocating a node removes its tasks from
  the groups above it and puts them back along another path: joining the groups of some
  node u at depths ≤ e and forming their own group at depths e+1 .. d-1 (e = d-1 re-parents
  the node: "move a task/group to another group"; smaller e moves its branch point up, i.e.
  splits its old parent), or merging it into another group at depth d (a merge, moving a
  branch point down). A single task relocated this way is "move one task to another group"
  at every depth at once. Every relocation of every node is scored at once with array
  arithmetic (costs of the groups joined, counts of the groups opened and emptied), so a
  sweep over all nodes of a 40-task, 15-depth tree costs a few tens of milliseconds; moves
  that break the budget are not taken.
- **Iterated local search.** Best-improvement per node, sweeps until no node improves (a
  local optimum), then a seeded perturbation (a few random feasible relocations) and local
  search again, keeping the best tree; three starts by default (the fully shared tree, Lu et
  al.'s greedy grouping, and the split beam's tree: on 40 random 6-10-task instances the third
  start raised the optimal share from 90 % to 100 %).
- **A certified gap.** The result carries :func:`branchnas.search.bound.lower_bound`, so the
  cost is within ``(cost - bound) / cost`` of the optimum.

Measured in ``bench/bench_search.py`` against the exact optimum on random instances with
6-10 tasks and 4-7 cut points.
"""

from __future__ import annotations

import logging
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..errors import BranchnasError
from ..tree import Tree
from ._common import SearchProblem, StrategyOutput, register_strategy

__all__ = ["LocalSearch", "TreeState"]

logger = logging.getLogger(__name__)

_EPS = 1e-12


def _canonical(lab: np.ndarray) -> np.ndarray:
    """Relabel groups 0, 1, ... in order of first appearance (the Tree's canonical order)."""
    _, first, inv = np.unique(lab, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inv].astype(np.int64)


class TreeState:
    """A tree as per-depth group labels ``L[d, task]`` with its group diameters and counts.

    Args:
        problem: the search problem.
        labels: (D, N) group label of every task at every depth (refining chain).
    """

    def __init__(self, problem: SearchProblem, labels: np.ndarray) -> None:
        self.p = problem
        dis = np.maximum(problem.dis, 0.0)  # a group's cost is never below 0
        dis[:, np.arange(problem.num_tasks), np.arange(problem.num_tasks)] = 0.0  # a task with itself
        self.dis = dis
        self.r = problem.resource.astype(np.int64)
        self.set(labels)

    def set(self, labels: np.ndarray) -> None:
        """Replace the tree (labels are canonicalised) and recompute diameters and counts."""
        lab = np.stack([_canonical(row) for row in np.asarray(labels)])
        depth, n = lab.shape
        self.L = lab
        self.k = lab.max(axis=1) + 1
        gmax = int(self.k.max())
        self.same = lab[:, :, None] == lab[:, None, :]
        rowmax = np.where(self.same, self.dis, -np.inf).max(axis=2)  # (D, N), own diagonal is 0
        diam = np.zeros((depth, gmax))
        np.maximum.at(diam, (np.repeat(np.arange(depth), n), lab.ravel()), rowmax.ravel())
        self.diam = diam
        self.tdiam = np.take_along_axis(diam, lab, axis=1)  # diameter of each task's group
        self.S = diam.sum(axis=1)
        self.cost = float((self.S / self.k).sum())
        self.resource = self.p.fixed_resource + int(self.k @ self.r)

    def tree(self) -> Tree:
        """The state as a :class:`Tree`."""
        parts = [[np.flatnonzero(row == g).tolist() for g in range(int(row.max()) + 1)] for row in self.L]
        return Tree.from_index_partitions(self.p.tasks, parts)

    # ------------------------------------------------------------------ moves
    def nodes(self, e0: int) -> np.ndarray:
        """Representative task (the first) of every node at depth ``e0`` (e0 = D: every task)."""
        if e0 >= self.p.depth:
            return np.arange(self.L.shape[1])
        _, first = np.unique(self.L[e0], return_index=True)
        return np.sort(first)

    def options(self, e0: int, reps: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every relocation of the nodes at depth ``e0`` holding tasks ``reps`` (e0 = D: tasks alone).

        Returns:
            ``(cost, resource, valid)`` of shapes (B, e0 + 2, N), (B, e0 + 2), (B, e0 + 2, N)
            for the B nodes: row ``e + 1`` for e = -1 .. e0 - 1 is "join the groups of task j
            at depths <= e, own group at depths e+1 .. e0-1" (row 0, e = -1: own group from
            the input, only in the node's own column); the last row is "merge into task j's
            group at depth e0". Options that are not moves (the node's own tasks, inside the
            shared prefix, nothing to merge with) have ``valid`` False.
        """
        L, D = self.L, self.p.depth
        n = L.shape[1]
        sp = self.p.shared_prefix
        reps = np.asarray(reps, dtype=np.int64)
        nb = reps.size
        tmask = self.same[e0, reps] if e0 < D else (np.arange(n)[None, :] == reps[:, None])  # (B, N)
        others = ~tmask
        d_hi = min(e0 + 1, D)
        dis = self.dis[:d_hi][None]  # (1, d_hi, N, N)
        tt = (tmask[:, :, None] & tmask[:, None, :])[:, None]
        d_t = np.where(tt, dis, 0.0).max(axis=(2, 3))  # (B, d_hi): the node's own diameter
        cross = np.where(tmask[:, None, :, None], dis, -np.inf).max(axis=2)  # (B, d_hi, N)
        in_anc = self.same[:d_hi, reps].transpose(1, 0, 2) & others[:, None, :]  # (B, d_hi, N)
        pair = in_anc[..., :, None] & in_anc[..., None, :]
        rest = np.where(pair, dis, 0.0).max(axis=(2, 3))  # (B, d_hi): old groups without the node
        vanish = ~in_anc.any(axis=2)
        anc = L[:d_hi, reps].T  # (B, d_hi)
        rows = np.arange(d_hi)[None, :]
        s_after = self.S[None, :d_hi] - self.diam[rows, anc] + rest
        k_after = np.maximum(self.k[None, :d_hi] - vanish, 1)  # 0 only when nothing is left to join
        gx = np.where(self.same[None, :d_hi] & others[:, None, None, :], cross[:, :, None, :],
                      -np.inf).max(axis=3)  # (B, d_hi, N): farthest node task from j's group
        base = np.where(in_anc, rest[:, :, None], self.tdiam[None, :d_hi])
        inc = np.maximum(np.maximum(base, gx), d_t[:, :, None]) - base
        r = self.r
        fixed = self.p.fixed_resource
        below_cost = float((self.S[e0 + 1:] / self.k[e0 + 1:]).sum()) if e0 < D else 0.0
        below_res = int(self.k[e0 + 1:] @ r[e0 + 1:]) if e0 < D else 0
        here_cost = float(self.S[e0] / self.k[e0]) if e0 < D else 0.0
        here_res = int(self.k[e0] * r[e0]) if e0 < D else 0
        cost = np.full((nb, e0 + 2, n), np.inf)
        res = np.zeros((nb, e0 + 2), dtype=np.int64)
        valid = np.zeros((nb, e0 + 2, n), dtype=bool)
        bi = np.arange(nb)
        join = (s_after[:, :e0, None] + inc[:, :e0]) / k_after[:, :e0, None]  # (B, e0, N)
        if e0 > 0:
            own = (s_after[:, :e0] + d_t[:, :e0]) / (k_after[:, :e0] + 1)
            zero = np.zeros((nb, 1))
            own_suf = np.concatenate([np.cumsum(own[:, ::-1], axis=1)[:, ::-1], zero], axis=1)
            res_own = (k_after[:, :e0] + 1) * r[None, :e0]
            res_own_suf = np.concatenate([np.cumsum(res_own[:, ::-1], axis=1)[:, ::-1], zero], axis=1)
            res_join = np.concatenate([zero, np.cumsum(k_after[:, :e0] * r[None, :e0], axis=1)], axis=1)
            tail_c = here_cost + below_cost
            tail_r = here_res + below_res + fixed
            cost[bi, 0, reps] = own_suf[:, 0] + tail_c
            cost[:, 1:e0 + 1] = np.cumsum(join, axis=1) + own_suf[:, 1:, None] + tail_c
            res[:, :e0 + 1] = res_join + res_own_suf + tail_r
            valid[bi, 0, reps] = sp == 0
            lo = max(sp - 1, 0)  # joins reach at least through the shared prefix
            valid[:, 1 + lo:e0 + 1] = others[:, None, :]
        if e0 < D and self.k[e0] > 1:
            s_here = self.S[e0] - self.diam[e0, L[e0, reps]]  # (B,)
            base_w = self.tdiam[e0][None, :]
            new_w = np.maximum(np.maximum(base_w, gx[:, e0]), d_t[:, e0, None])
            c_here = (s_here[:, None] - base_w + new_w) / (self.k[e0] - 1)
            cost[:, e0 + 1] = join.sum(axis=1) + c_here + below_cost
            res[:, e0 + 1] = (k_after[:, :e0] * r[None, :e0]).sum(axis=1) + (self.k[e0] - 1) * r[e0] \
                + below_res + fixed
            valid[:, e0 + 1] = others
        valid[~others.any(axis=1)] = False  # a node holding every task has nowhere to go
        return cost, res, valid

    def best_move(self, e0: int, reps: np.ndarray, limit: int,
                  rng: Optional[np.random.Generator] = None) -> Optional[Tuple[float, int, int, int, int, int]]:
        """The best relocation within ``limit`` of any of the nodes (a random one with ``rng``).

        Returns:
            ``(cost, resource, t0, kind, e, j)`` (kind 0: join j's path down to e, 1: merge
            into j's group at e0), or None when no relocation fits.
        """
        cost, res, valid = self.options(e0, reps)
        ok = valid & (res <= limit)[:, :, None]
        if not ok.any():
            return None
        if rng is None:
            score = np.where(ok, cost, np.inf)
            low = score.min()
            tie = np.flatnonzero(score.ravel() <= low + _EPS)
            resf = np.broadcast_to(res[:, :, None], cost.shape).ravel()
            flat = int(tie[np.argmin(resf[tie])])
        else:
            flat = int(rng.choice(np.flatnonzero(ok.ravel())))
        b, rest = divmod(flat, cost.shape[1] * cost.shape[2])
        row, j = divmod(rest, cost.shape[2])
        kind = 1 if row == e0 + 1 else 0
        e = e0 if kind else row - 1
        return float(cost[b, row, j]), int(res[b, row]), int(np.asarray(reps)[b]), kind, e, j

    def apply(self, e0: int, t0: int, kind: int, e: int, j: int) -> None:
        """Carry out one relocation returned by :meth:`best_move`."""
        L = self.L.copy()
        D = self.p.depth
        tmask = self.same[e0, t0] if e0 < D else (np.arange(L.shape[1]) == t0)
        top = e0 if kind == 1 else e
        for d in range(top + 1):
            L[d, tmask] = self.L[d, j]
        if kind == 0:
            for d in range(e + 1, min(e0, D)):
                L[d, tmask] = self.k[d] + 1  # a fresh label
        self.set(L)


def _start_labels(problem: SearchProblem, tree: Tree) -> np.ndarray:
    out = np.zeros((problem.depth, problem.num_tasks), dtype=np.int64)
    for d, part in enumerate(tree.index_groupings):
        for g, group in enumerate(part):
            out[d, list(group)] = g
    return out


@register_strategy("local", exact=False, many_tasks=True, lower_bound=True, options=("seed", "beam_width"))
class LocalSearch:
    """Iterated local search over trees under the budget, with a certified lower bound.

    Args:
        rounds: perturbation rounds after the first local optimum of each start.
        kick: random relocations per perturbation.
        starts: where to start: "shared" (the fully shared tree) or the best tree of a
            heuristic strategy ("fa": Lu et al.'s greedy, "beam", "beam-split", "random");
            a name twice starts twice (different perturbations).
        seed: seed of the perturbations.
        beam_width: the beam's n when "beam" is a start.
        time_limit: stop perturbing after this many seconds of this process's CPU time
            (None: only ``rounds`` and ``patience``). Small problems finish their rounds long
            before it (under a second for 10 tasks); where it binds (40 tasks × 15 cut
            points) the result depends on the machine's speed.
        bound: compute the lower bound (:func:`branchnas.search.bound.lower_bound`).
        atoms: the large-neighbourhood move re-solves the top of the tree exactly over at
            most this many groups of one depth (0 turns it off).
        atom_entries: and only while the exact programme needs at most this many entries.
        patience: stop perturbing a start after this many rounds in a row without a better tree.
    """

    def __init__(self, rounds: int = 200, kick: int = 2,
                 starts: Sequence[str] = ("shared", "fa", "beam-split"), seed: int = 0, beam_width: int = 10, time_limit: Optional[float] = 6.5,
                 bound: bool = True, atoms: int = 8, atom_entries: int = 300_000,
                 patience: int = 40) -> None:
        self.patience = patience
        self.atoms = atoms
        self.atom_entries = atom_entries
        self.rounds = rounds
        self.kick = kick
        self.starts = tuple(starts)
        self.seed = seed
        self.beam_width = beam_width
        self.time_limit = time_limit
        self.bound = bound

    def _descend(self, st: TreeState, limit: int, rng: np.random.Generator) -> int:
        """Steepest descent per depth: the best relocation of any node at a depth, until none improves.

        Depths are visited in a random order; at each, the best move over all its nodes is
        taken while it lowers the cost (or keeps it and frees resource); a full round over
        the depths without a move is a local optimum.
        """
        D = st.p.depth
        moves = 0
        improved = True
        while improved:
            improved = False
            for e0 in rng.permutation(D + 1).tolist():
                while True:
                    m = st.best_move(e0, st.nodes(e0), limit)
                    if m is None:
                        break
                    cost, res = m[0], m[1]
                    if not (cost < st.cost - _EPS or (cost <= st.cost + _EPS and res < st.resource)):
                        break
                    st.apply(e0, *m[2:])
                    moves += 1
                    improved = True
        return moves

    def _resolve_top(self, st: TreeState, limit: int) -> bool:
        """Large-neighbourhood move: re-solve the top depths exactly over the groups of one depth.

        Takes the deepest depth d* whose groups ("atoms") are few enough for the exact
        dynamic programme over depths 1..d* (keeping depths below d* as they are), and
        replaces the top of the tree by the best one made of those atoms. Returns whether
        the cost went down.
        """
        from ._common import make_problem
        from ._partitions import subset_max_table
        from .exact import ExactSolver, estimate_entries

        p = st.p
        D, sp = p.depth, p.shared_prefix
        for dstar in range(D - 1, -1, -1):
            m = int(st.k[dstar])
            if m < 2 or m > self.atoms or dstar + 1 <= sp:
                continue
            if estimate_entries(m, dstar + 1, sp) > self.atom_entries:
                continue
            key = (dstar, st.L[dstar:].tobytes())
            if key in self._tried:
                continue  # the same atoms and the same tree below: the same answer
            self._tried.add(key)
            atoms = [np.flatnonzero(st.L[dstar] == g) for g in range(m)]
            dis = st.dis[: dstar + 1]
            between = np.zeros((dstar + 1, m, m))
            within = np.zeros((dstar + 1, m))
            for u in range(m):
                within[:, u] = dis[:, atoms[u]][:, :, atoms[u]].reshape(dstar + 1, -1).max(axis=1)
                for v in range(u + 1, m):
                    x = dis[:, atoms[u]][:, :, atoms[v]].reshape(dstar + 1, -1).max(axis=1)
                    between[:, u, v] = between[:, v, u] = x
            pairs = subset_max_table(between)
            own = np.zeros((dstar + 1, 1 << m))
            for u in range(m):
                bit = 1 << u
                own[:, bit:2 * bit] = np.maximum(own[:, :bit], within[:, u:u + 1])
            smax = np.maximum(pairs, own)
            below = int(st.k[dstar + 1:] @ st.r[dstar + 1:])
            sub = make_problem(1.0 - between, [f"a{u}" for u in range(m)], st.r[: dstar + 1],
                               budget=limit - below - p.fixed_resource, shared_prefix=sp)
            if sub.budget is None or sub.budget < sub.min_resource:
                continue
            solver = ExactSolver(sub, max_entries=self.atom_entries, subset_max=smax)
            found = solver.top_k(min(sub.budget, sub.max_resource), 1)
            if not found:
                continue
            new = st.L.copy()
            for d, part in enumerate(found[0].index_groupings):
                for g, members in enumerate(part):
                    for u in members:
                        new[d, atoms[u]] = g
            trial = TreeState(p, new)
            if trial.resource <= limit and trial.cost < st.cost - _EPS:
                st.set(trial.L)
                return True
        return False

    def _kick(self, st: TreeState, limit: int, rng: np.random.Generator) -> None:
        D, n = st.p.depth, st.p.num_tasks
        for _ in range(int(rng.integers(1, 2 * self.kick + 1))):  # 1 .. 2 kick random moves
            for _try in range(10):
                e0, t0 = int(rng.integers(1, D + 1)), int(rng.integers(n))
                m = st.best_move(e0, np.array([t0]), limit, rng)
                if m is not None:
                    st.apply(e0, *m[2:])
                    break

    def _improve(self, st: TreeState, limit: int, rng: np.random.Generator) -> int:
        moves = self._descend(st, limit, rng)
        while self.atoms >= 2 and self._resolve_top(st, limit):
            moves += 1 + self._descend(st, limit, rng)
        return moves

    def _starts(self, problem: SearchProblem) -> List[Tree]:
        from . import create_strategy, list_strategies, strategy_meta

        out: List[Tree] = []
        for name in self.starts:
            if name == "shared":
                out.append(Tree.fully_shared(problem.tasks, problem.depth))
            elif name in list_strategies() and not strategy_meta(name).get("many_tasks") \
                    and not strategy_meta(name).get("exact"):
                takes = strategy_meta(name).get("options", ())
                kw = {k: v for k, v in (("beam_width", self.beam_width), ("seed", self.seed)) if k in takes}
                out.extend(create_strategy(name, **kw).run(problem, 1).trees[:1])
            else:
                raise BranchnasError(f"unknown local-search start {name!r}; choose from: shared, or a "
                                     "heuristic strategy (fa, beam, beam-split, random)")
        return out

    def run(self, problem: SearchProblem, top_k: int = 1) -> StrategyOutput:
        """Search ``problem``; see :class:`StrategyOutput` (``lower_bound`` is filled in)."""
        for name, v, lo in (("rounds", self.rounds, 0), ("kick", self.kick, 1)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
                raise BranchnasError(f"local search: {name} must be an integer >= {lo}, got {v!r}")
        limit = problem.limit
        rng = np.random.default_rng(self.seed)
        self._tried: set = set()
        t_start = time.process_time()  # CPU time: "one core", whatever else runs beside
        found: dict = {}
        evaluated = 0

        def keep(state: TreeState) -> None:
            key = state.L.tobytes()
            if key not in found:
                found[key] = (state.cost, state.resource, state.L.copy())

        for tree in self._starts(problem):
            st = TreeState(problem, _start_labels(problem, tree))
            if st.resource > limit:
                continue
            evaluated += self._improve(st, limit, rng)
            keep(st)
            best_c, best_l = st.cost, st.L.copy()
            stale = 0
            for _ in range(self.rounds):
                if self.time_limit is not None and time.process_time() - t_start > self.time_limit:
                    break
                if stale >= self.patience:
                    break
                trial = TreeState(problem, best_l)
                self._kick(trial, limit, rng)
                evaluated += self._improve(trial, limit, rng)
                keep(trial)
                if trial.cost < best_c - _EPS:
                    stale = 0
                else:
                    stale += 1
                if trial.cost <= best_c + _EPS:  # equal cost: move on along the plateau
                    best_c, best_l = trial.cost, trial.L.copy()
        ranked = sorted(found.values(), key=lambda x: (x[0], x[1], x[2].tobytes()))
        trees = [TreeState(problem, lab).tree() for _, _, lab in ranked[:top_k]]
        lb = None
        if self.bound:
            from .bound import lower_bound

            lb = lower_bound(problem)
        logger.debug("local search: %d improving moves, %d local optima", evaluated, len(found))
        return StrategyOutput(trees, enumerated=evaluated, feasible=None, lower_bound=lb)

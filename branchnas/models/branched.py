"""BranchedNet: the network a task tree describes, built from a search space's blocks.

Group ``g`` at depth ``d`` of the tree owns one fresh copy of block ``d`` of the space
(``nodes[d][g]``); its input is the output of its parent group at depth ``d-1`` (the image
for ``d = 0``). Every node runs at most once per forward pass, however many tasks it feeds,
and a node whose tasks were not requested does not run at all. Each task's head reads the
output of its group at the last depth. Single-task networks and the fully shared "MTL
baseline" are just trees (:meth:`~branchnas.tree.Tree.single_task`,
:meth:`~branchnas.tree.Tree.fully_shared`).

The parameter count equals the accounting exactly::

    sum(p.numel() for p in BranchedNet(tree, space).parameters())
        == tree_params(tree, space.block_params, head_params=space.head_params)

Example:
    >>> import torch
    >>> from branchnas.spaces import load_space
    >>> from branchnas.tree import Tree
    >>> space = load_space("scenes")
    >>> tree = Tree(space.task_names, [[space.task_names]] * 2
    ...             + [[["semseg", "depth", "normals", "edges"], ["scene"]]] * 2)
    >>> net = BranchedNet(tree, space)
    >>> out = net(torch.zeros(2, 3, 64, 64), tasks=["depth"])
    >>> out["depth"].shape
    torch.Size([2, 1, 64, 64])
"""

from __future__ import annotations

import logging
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union

from torch import Tensor, nn

from ..errors import BranchnasError
from ..spaces import SearchSpace
from ..tree import Tree

__all__ = ["BranchedNet"]

logger = logging.getLogger(__name__)


class BranchedNet(nn.Module):
    """A branched multi-task network: one block copy per tree node, one head per task.

    Args:
        tree: the task tree; its depth must equal ``space.depth`` and its tasks must be
            tasks of the space (a subset is fine).
        space: the search space giving the blocks and the heads.

    Attributes:
        tree: the tree.
        space: the search space.
        nodes: ``nn.ModuleList`` per depth of ``nn.ModuleList`` per group: ``nodes[d][g]``
            is the copy of block ``d`` owned by group ``g`` of depth ``d`` (0-based).
        heads: ``nn.ModuleDict`` task → head, called as ``head(features, out_hw=...)``.
        paths: task → tuple of its group index at every depth.

    Raises:
        BranchnasError: when the tree's depth differs from the space's or it names a task
            the space does not have.
    """

    def __init__(self, tree: Tree, space: SearchSpace) -> None:
        super().__init__()
        space.check_tree(tree)
        bad = [t for t in tree.tasks if "." in t]
        if bad:
            raise BranchnasError(
                f"task names may not contain '.', got {', '.join(bad)}; rename the task(s)"
            )
        self.tree = tree
        self.space = space
        depth = tree.depth
        self.nodes = nn.ModuleList(
            nn.ModuleList(space.make_block(d) for _ in range(tree.num_groups(d)))
            for d in range(depth)
        )
        self.heads = nn.ModuleDict({t: space.make_head(t) for t in tree.tasks})
        self.paths: Dict[str, Tuple[int, ...]] = {
            t: tuple(tree.group_of(d, t) for d in range(depth)) for t in tree.tasks
        }
        logger.debug("built BranchedNet with groups per depth %s", tree.group_counts)

    # ------------------------------------------------------------------ structure
    @property
    def tasks(self) -> Tuple[str, ...]:
        """The tree's tasks, in task-index order."""
        return self.tree.tasks

    def node_tasks(self, d: int, g: int) -> Tuple[str, ...]:
        """Tasks fed by node ``(d, g)`` (0-based depth and group)."""
        return self.tree.groupings[d][g]

    def _check_tasks(self, tasks: Optional[Union[str, Sequence[str]]]) -> List[str]:
        if tasks is None:
            return list(self.tree.tasks)
        names = [tasks] if isinstance(tasks, str) else list(tasks)
        unknown = [t for t in names if t not in self.paths]
        if unknown:
            raise BranchnasError(
                f"this network has no task(s) {', '.join(map(str, unknown))}; "
                f"choose from: {', '.join(self.tree.tasks)}"
            )
        if not names:
            raise BranchnasError("no tasks requested; pass tasks=None for all or name some")
        return list(dict.fromkeys(names))

    def _run(self, image: Tensor, names: Sequence[str]) -> Dict[Tuple[int, int], Tensor]:
        """Run the nodes the tasks ``names`` need; return the last depth's outputs by group
        (keyed ``(D-1, g)``)."""
        depth = self.tree.depth
        needed: List[Set[int]] = [{self.paths[t][d] for t in names} for d in range(depth)]
        prev: Dict[int, Tensor] = {}
        for d in range(depth):
            cur: Dict[int, Tensor] = {}
            for g in sorted(needed[d]):
                x = image if d == 0 else prev[self.tree.parent(d, g)]
                cur[g] = self.nodes[d][g](x)
            prev = cur
        return {(depth - 1, g): y for g, y in prev.items()}

    # ------------------------------------------------------------------ forward
    def forward(
        self, image: Tensor, tasks: Optional[Union[str, Sequence[str]]] = None
    ) -> Dict[str, Tensor]:
        """Predict the requested tasks.

        Args:
            image: ``(B, 3, H, W)``.
            tasks: task names to predict (default: all of the tree's tasks); only the
                branches that lead to them are run.

        Returns:
            task → prediction (dense predictions at the image's resolution ``(H, W)``).

        Raises:
            BranchnasError: for a task the network does not have.
        """
        names = self._check_tasks(tasks)
        last = self._run(image, names)
        d = self.tree.depth - 1
        out_hw = tuple(image.shape[-2:])
        return {t: self.heads[t](last[(d, self.paths[t][d])], out_hw=out_hw) for t in names}

    def forward_features(self, image: Tensor, task: str) -> List[Tensor]:
        """The D block outputs along ``task``'s path (for the task affinity).

        Raises:
            BranchnasError: for a task the network does not have.
        """
        self._check_tasks([task])
        feats: List[Tensor] = []
        x = image
        for d, g in enumerate(self.paths[task]):
            x = self.nodes[d][g](x)
            feats.append(x)
        return feats

    # ------------------------------------------------------------------ parameter groups
    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of nodes that feed two or more tasks."""
        for d, groups in enumerate(self.tree.groupings):
            for g, members in enumerate(groups):
                if len(members) > 1:
                    yield from self.nodes[d][g].parameters()

    def task_parameters(self, task: str) -> Iterator[nn.Parameter]:
        """Parameters only ``task`` uses: its head and the nodes that feed it alone.

        Together with :meth:`shared_parameters` over all tasks this covers every parameter
        exactly once.

        Raises:
            BranchnasError: for a task the network does not have.
        """
        self._check_tasks([task])
        for d, g in enumerate(self.paths[task]):
            if len(self.tree.groupings[d][g]) == 1:
                yield from self.nodes[d][g].parameters()
        yield from self.heads[task].parameters()

    def extra_repr(self) -> str:
        return f"tasks={list(self.tree.tasks)}, groups per depth={list(self.tree.group_counts)}"

"""The stored tree of a file backup, browsable, optionally with selection (the wizard's
"which parts" step). Children are added when a directory is expanded, so a large listing
costs only what the operator opens."""

from __future__ import annotations

from textual.binding import Binding
from textual.message import Message
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from insite_console import clock
from insite_console.repo.entry import Entry


class StoredTree(Tree):
    BINDINGS = [Binding("space", "toggle_selected", "Select", show=False)]

    class SelectionChanged(Message):
        def __init__(self, tree: "StoredTree", includes: list[str]) -> None:
            super().__init__()
            self.tree = tree
            self.includes = includes

    def __init__(self, selectable: bool = False, *, id: str | None = None) -> None:
        super().__init__("/", id=id)
        self.selectable = selectable
        self.children_of: dict[str, list[Entry]] = {}
        self.selected_paths: set[str] = set()
        self._populated: set[str] = set()
        self.show_root = True
        self.guide_depth = 2

    def load(self, entries: list[Entry], truncated: bool = False) -> None:
        self.clear()
        self.children_of = {}
        self._populated = set()
        for entry in entries:
            parent = entry.path.rsplit("/", 1)[0] if "/" in entry.path else ""
            self.children_of.setdefault(parent, []).append(entry)
        self.root.data = None
        self._populate(self.root, "")
        if truncated:
            self.root.add_leaf("… listing truncated (restore patterns still apply to everything)")
        self.root.expand()

    def _label(self, entry: Entry) -> str:
        name = entry.path.rsplit("/", 1)[-1]
        mark = ""
        if self.selectable:
            path = "/" + entry.path
            if path in self.selected_paths:
                mark = "☑ "
            elif entry.type == "dir" and any(p.startswith(path + "/") for p in self.selected_paths):
                mark = "◐ "  # some of what is inside is ticked
            else:
                mark = "☐ "
        if entry.type == "dir":
            return f"{mark}{name}/"
        if entry.type == "symlink":
            return f"{mark}{name} → {entry.target}"
        return f"{mark}{name}  {clock.human_bytes(entry.size)}"

    def _populate(self, node: TreeNode, path: str) -> None:
        if path in self._populated:
            return
        self._populated.add(path)
        for entry in self.children_of.get(path, []):
            if entry.type == "dir":
                node.add(self._label(entry), data=entry, allow_expand=bool(self.children_of.get(entry.path)))
            else:
                node.add_leaf(self._label(entry), data=entry)

    def on_tree_node_expanded(self, event: Tree.NodeExpanded) -> None:
        entry = event.node.data
        if isinstance(entry, Entry):
            self._populate(event.node, entry.path)

    def action_toggle_selected(self) -> None:
        node = self.cursor_node
        if not self.selectable or node is None or not isinstance(node.data, Entry):
            return
        path = "/" + node.data.path
        if path in self.selected_paths:
            self.selected_paths.discard(path)
        else:
            self.selected_paths.add(path)
        node.set_label(self._label(node.data))
        parent = node.parent
        while parent is not None and isinstance(parent.data, Entry):  # their partial marks
            parent.set_label(self._label(parent.data))
            parent = parent.parent
        self.post_message(self.SelectionChanged(self, self.includes()))

    def includes(self) -> list[str]:
        """`--include` patterns for the selection: a directory brings everything below it."""
        patterns = []
        for path in sorted(self.selected_paths):
            entry = next((e for entries in self.children_of.values() for e in entries if "/" + e.path == path), None)
            patterns.append(path + "/**" if entry is not None and entry.type == "dir" else path)
        return patterns

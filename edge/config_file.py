"""Reading a config file without trusting it: a bounded regular file, UTF-8, bounded YAML
(depth, nodes, aliases), and the line of every key so that every problem names file:line.
edge.config validates what this reads against the schema."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, field_validator
from yaml.composer import Composer, ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, SequenceNode
from yaml.resolver import Resolver


class Strict(BaseModel):
    """Base of every config section: unknown keys are errors (a typo must not silently fall back to
    a default on a line that ships parts), values are frozen, and no float may be inf or nan:
    `.inf` is valid YAML and would pass a bare `gt=0`, then crash a daemon at start or make a
    timeout wait forever."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _no_nul(cls, v: Any) -> Any:
        # The OS, OpenCV and MQTT all end a string at NUL (or raise ValueError deep in a thread).
        if isinstance(v, (str, Path)) and "\0" in str(v):
            raise ValueError("must not contain a NUL character")
        return v


class ConfigError(ValueError):
    """Every problem found in a config file, one per line, each with file:line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# --- reading the file ---------------------------------------------------------------

MAX_BYTES = 1 << 20  # a config is a few KiB: more is the wrong file (a log, an image, /dev/zero)
MAX_DEPTH = 32  # a config nests 3 levels; PyYAML, _lines, the constructor and pydantic recurse per level
MAX_NODES = 10_000  # values once aliases are expanded; the shipped config has about 170


def _strerror(exc: BaseException) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def read_bytes(path: Path) -> bytes:
    """The config file's bytes, at most MAX_BYTES of a regular file, or ConfigError naming it.

    stat() first, so a folder, FIFO or device (/dev/zero) is refused without being opened;
    O_NONBLOCK, so a FIFO swapped in between stat and open cannot hang the check; fstat()
    again on what was opened, and never more than MAX_BYTES + 1 read.
    """
    def fail(why: str) -> ConfigError:
        return ConfigError([f"{path}: {why}"])

    too_big = f"a config file is at most {MAX_BYTES // 2**20} MiB (is it the right file?)"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise fail("cannot read: config file not found (give --config FILE)") from None
    except (OSError, ValueError) as exc:  # EACCES above it, ENAMETOOLONG, ELOOP; NUL in the name
        raise fail(f"cannot look at the config file: {_strerror(exc)}") from None
    if not stat.S_ISREG(st.st_mode):
        raise fail(f"cannot read: {_kind(st.st_mode)}, not a config file")
    if st.st_size > MAX_BYTES:
        raise fail(f"cannot read: {st.st_size} bytes; {too_big}")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise fail(f"cannot read: {_strerror(exc)}") from None
    chunks: list[bytes] = []
    size = 0
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise fail(f"cannot read: {_kind(st.st_mode)}, not a config file")
        while size <= MAX_BYTES:
            chunk = os.read(fd, MAX_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise fail(f"cannot read: {_strerror(exc)}") from None
    finally:
        os.close(fd)
    if size > MAX_BYTES:  # it grew after stat()
        raise fail(f"cannot read: more than {MAX_BYTES} bytes; {too_big}")
    return b"".join(chunks)


def _decode(raw: bytes, source: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - raw.rfind(b"\n", 0, exc.start)
        raise ConfigError([f"{source}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {column}): "
                           "a binary file, or text saved in another encoding"]) from None


# --- YAML, bounded ------------------------------------------------------------------

if yaml.__with_libyaml__:
    from yaml._yaml import CParser as _Parser  # noqa: I001 - libyaml scans a 1 MiB line in ms; pure Python ~1 s

    _POSITION_IN_BYTES = True  # a libyaml ReaderError's position is a byte offset

    class _Events(_Parser):
        def __init__(self, stream: bytes | str) -> None:
            _Parser.__init__(self, stream)
else:  # pragma: no cover - PyYAML built without libyaml: same results, slower
    from yaml.parser import Parser as _Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    _POSITION_IN_BYTES = False

    class _Events(Reader, Scanner, _Parser):  # type: ignore[no-redef]
        def __init__(self, stream: bytes | str) -> None:
            Reader.__init__(self, stream if isinstance(stream, str) else stream.decode("utf-8"))
            Scanner.__init__(self)
            _Parser.__init__(self)


class _Loader(Composer, _Events, SafeConstructor, Resolver):
    """SafeLoader's YAML with bounds, so no file can exhaust memory or the stack.

    Nesting is capped while composing (before anything recurses on it) and every alias
    adds the size of what it stands for, so an alias or merge-key bomb is refused when
    its expansion passes MAX_NODES, though the composed graph itself stays small.
    An alias inside its own anchor (a recursive structure) is refused too. Timestamps
    stay strings (`2001-02-30` is not a date, and no setting is one), and a value
    Python cannot convert (an int past its digit limit) is a ConstructorError at its line.
    """

    def __init__(self, stream: bytes | str) -> None:
        _Events.__init__(self, stream)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self._depth = 0
        self._expanded = 0
        self._shape: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, expanded depth)

    def _grow(self, nodes: int, mark: Any) -> None:
        self._expanded += nodes
        if self._expanded > MAX_NODES:
            raise ComposerError(None, None, f"more than {MAX_NODES} values once aliases are expanded (a config "
                                "has a few hundred): refused as an alias bomb", mark)

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:
                shape = self._shape.get(id(target))
                if shape is None:
                    raise ComposerError(None, None, f"alias *{short(event.anchor, 40)} is inside its own anchor "
                                        "(a recursive structure)", event.start_mark)
                self._grow(shape[0], event.start_mark)
            return super().compose_node(parent, index)  # an undefined alias is its error
        if self._depth >= MAX_DEPTH:
            raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(node, SequenceNode):
            children = node.value
        elif isinstance(node, MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        size, depth = 1, 1
        for child in children:
            s, d = self._shape[id(child)]
            size, depth = size + s, max(depth, d + 1)
        if depth > MAX_DEPTH:
            raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels once aliases are expanded",
                                event.start_mark)
        self._shape[id(node)] = (size, depth)
        self._grow(1, event.start_mark)
        return node

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:  # e.g. a bad !!float; ints are handled below
            raise ConstructorError(None, None, f"cannot read this {node.tag.rsplit(':', 1)[-1]}: "
                                   f"{one_line(str(exc), 80)}", node.start_mark) from None

    def construct_yaml_int(self, node: Node) -> int:
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # int() refuses more than sys.get_int_max_str_digits() (4300) digits
            raise ConstructorError(None, None, f"an integer of {len(node.value)} characters is no setting "
                                   "(Python reads at most 4300 digits)", node.start_mark) from None


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
_Loader.add_constructor("tag:yaml.org,2002:timestamp", SafeConstructor.construct_yaml_str)


def short(value: Any, limit: int = 60) -> str:
    """repr() cut to `limit`: a value may be 1 MiB long, or an int too long for repr() itself."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        text = f"<{type(value).__name__} too large to show>"
    return text if len(text) <= limit else text[:limit] + "..."


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


def key_text(path: tuple) -> str:
    """A key path for a message; odd keys (long, control characters, not strings) shown as repr."""
    parts = []
    for p in path:
        text = str(p) if isinstance(p, (str, int)) and not isinstance(p, bool) else short(p, 40)
        parts.append(text if text.isprintable() and len(text) <= 60 else short(p, 40))
    return ".".join(parts)


def _key(node: Node) -> Any:
    """A mapping key as YAML will construct it (`1` and `01` are one key), or its text."""
    try:
        key = _Loader("").construct_object(node, deep=True)
        hash(key)
    except (yaml.YAMLError, TypeError, ValueError):
        return (node.tag, short(node.value, 200))
    return key


def _lines(node: Node, path: tuple = (), repeats: list[tuple[tuple, int, int]] | None = None,
           _within: frozenset[int] = frozenset()) -> dict[tuple, int]:
    """Map each key path (as pydantic reports it) to its 1-based line in the file.

    A key given twice in one mapping is appended to `repeats` as (path, first line, line):
    YAML keeps only the last one, which would silently drop a whole section or setting.
    Its recursion is bounded by _Loader's MAX_DEPTH (counted with aliases expanded).
    """
    out = {path: node.start_mark.line + 1}
    if id(node) in _within or len(path) > MAX_DEPTH:  # an alias to its own ancestor: nothing more to map
        return out
    _within = _within | {id(node)}
    if isinstance(node, MappingNode):
        first: dict[Any, int] = {}
        for k, v in node.value:
            ident = _key(k)
            key = k.value if isinstance(k, yaml.ScalarNode) else ident  # a list's node value is unhashable
            line = k.start_mark.line + 1
            if repeats is not None and ident in first:
                repeats.append((path + (key,), first[ident], line))
            first.setdefault(ident, line)
            out[path + (ident,)] = line  # pydantic names an unknown key as constructed (1, not "01")
            out[path + (key,)] = line
            out.update({p: ln for p, ln in _lines(v, path + (key,), repeats, _within).items()
                        if p != path + (key,)})
    elif isinstance(node, SequenceNode):
        for i, v in enumerate(node.value):
            out.update(_lines(v, path + (i,), repeats, _within))
    return out


def _yaml_problem(exc: yaml.YAMLError, source: str, raw: bytes, text: str) -> str:
    """One line for a YAML error, with the line it is on (PyYAML's own str() spans several)."""
    if isinstance(exc, yaml.reader.ReaderError):
        pos = exc.position
        line = (raw.count(b"\n", 0, pos) if _POSITION_IN_BYTES else text.count("\n", 0, pos)) + 1
        char = exc.character
        what = f"U+{char:04X}" if isinstance(char, int) else repr(char)
        return (f"{source}:{line}: not valid YAML: character {what} is not allowed in YAML text "
                "(a binary file, or a control character)")
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc)
    context = getattr(exc, "context", None)
    if context and context != problem:
        problem = f"{problem} ({context})"
    if mark is None:
        return f"{source}: not valid YAML: {one_line(problem)}"
    lines = text.split("\n")
    if mark.line < len(lines) and mark.column < len(lines[mark.line]) and lines[mark.line][mark.column] == "\t":
        problem += "; a tab: YAML indents with spaces"
    return f"{source}:{mark.line + 1}: not valid YAML: {one_line(problem)}"


def read_yaml(raw: bytes, source: str) -> tuple[Any, dict[tuple, int], list[tuple[tuple, int, int]]]:
    """The document in `raw`, the line of every key path, and every repeated key as (path,
    first line, repeat line); ConfigError for what is not bounded, UTF-8, valid YAML."""
    if len(raw) > MAX_BYTES:
        raise ConfigError([f"{source}: {len(raw)} bytes; a config file is at most {MAX_BYTES // 2**20} MiB"])
    text = _decode(raw, source)
    loader = _Loader(raw if _POSITION_IN_BYTES else text)
    repeats: list[tuple[tuple, int, int]] = []
    try:
        try:
            node = loader.get_single_node()
            lines = _lines(node, (), repeats) if node is not None else {}
            data = loader.construct_document(node) if node is not None else None  # after _lines: merges edit nodes
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_problem(exc, source, raw, text)]) from None
    except RecursionError:  # a safety net: MAX_DEPTH keeps every recursion far from Python's limit
        raise ConfigError([f"{source}: not valid YAML: nested too deeply"]) from None
    return data, lines, repeats

"""One base class for the errors users cause (bad paths, files, keys); the CLI prints them and exits 2. Beside
it, the two text checks every front end shares: a file read as UTF-8 and a string that must be valid text."""

from __future__ import annotations

from pathlib import Path


class PersonalizeError(ValueError):
    """Bad input: the message names what was wrong and what was expected."""


def read_text(path: str | Path, what: str) -> str:
    """The UTF-8 text of `path` ("<what> <path> ..." errors for a folder, an unreadable or a non-UTF-8 file)."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise PersonalizeError(f"{what} {path} is not UTF-8 text (byte {err.start} is {err.object[err.start]:#04x}); "
                               "expected a UTF-8 text file (re-save it as UTF-8)") from None
    except IsADirectoryError:
        raise PersonalizeError(f"{what} {path} is a folder; expected a text file") from None
    except OSError as err:
        raise PersonalizeError(f"{what} {path} cannot be read ({err.strerror or err})") from None


def check_text(text: str, what: str) -> str:
    """`text` unchanged, or an error if it holds bytes that are not UTF-8 (a terminal in another encoding passes
    them to Python as lone surrogates, which the tokenizer rejects with a TypeError)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        raise PersonalizeError(f"{what} {shown!r} is not valid UTF-8 text; expected UTF-8 (is the terminal set "
                               "to another encoding?)") from None
    return text


class Stopped(KeyboardInterrupt):
    """Ctrl-C, with what was kept and how to go on; the CLI prints it as one line and exits 130."""


def os_error_line(err: OSError) -> str:
    """One line for an error of the machine rather than of the input: a full disk, a folder that is not writable,
    a file where a folder was expected."""
    import errno

    where = f" ({err.filename})" if err.filename else ""
    hint = {errno.ENOSPC: "free some space or choose another output folder",
            errno.EACCES: "choose a folder you can write to", errno.EROFS: "choose a folder you can write to",
            errno.EEXIST: "a file is in the way: remove it or choose another path",
            errno.ENOTDIR: "a file is in the way where a folder was expected"}.get(err.errno, "")
    return f"{err.strerror or err}{where}" + (f"; {hint}" if hint else "")

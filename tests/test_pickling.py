from __future__ import annotations

import decimal
import functools
import io
import pickle
import sys
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import corral
import corral.blocking
import helpers
import proc_helpers
from corral._pickling import pickled_globals

# -- is_picklable ---------------------------------------------------------------------------


def numbers() -> Iterator[int]:
    yield 1


@pytest.mark.parametrize(
    "obj",
    [
        1,
        "text",
        None,
        [1, {"a": (2, 3.0)}],
        helpers.square,
        functools.partial(helpers.add, b=1),
        proc_helpers.Multiplier(2),
        proc_helpers.decorated_square,
        corral.WorkerCrashed("gone", pid=1, exitcode=-9),
        ValueError("bad"),
    ],
    ids=repr,
)
def test_is_picklable_true(obj: object) -> None:
    assert corral.is_picklable(obj) is True


def nested() -> Callable[[int], int]:
    def inner(x: int) -> int:
        return x

    return inner


@pytest.mark.parametrize(
    "obj",
    [
        lambda x: x,
        nested(),
        threading.Lock(),
        numbers(),
        functools.partial(lambda x: x, 1),
        [1, threading.Lock()],
        proc_helpers.UnpicklableError("holds a lock"),
    ],
    ids=["lambda", "nested", "lock", "generator", "partial-of-lambda", "list-with-lock", "exc"],
)
def test_is_picklable_false(obj: object) -> None:
    assert corral.is_picklable(obj) is False


def test_is_picklable_false_for_an_open_file(tmp_path: Path) -> None:
    with (tmp_path / "f.txt").open("w") as f:
        assert corral.is_picklable(f) is False
    assert corral.is_picklable(io.BytesIO(b"x")) is True  # in-memory buffers do pickle


def test_is_picklable_never_raises() -> None:
    class Explodes:
        def __reduce__(self) -> Any:
            raise RuntimeError("boom")

    assert corral.is_picklable(Explodes()) is False


def test_blocking_is_picklable_is_the_same_function() -> None:
    assert corral.blocking.is_picklable is corral.is_picklable


# -- pre-flight checks of the function ------------------------------------------------------


async def async_square(x: int) -> int:
    return x * x


async def async_numbers(_: int) -> Any:
    yield 1


def local_callable_object() -> object:
    class Local:
        def __call__(self, x: int) -> int:
            return x

    return Local()


@pytest.fixture
async def pool() -> Any:
    async with corral.ProcessPool(2) as pool:
        yield pool
    assert pool.statistics().started == 0  # nothing was ever sent


@pytest.mark.parametrize(
    ("fn", "words"),
    [
        (lambda x: x, ["is a lambda", "importable", "module level", "offload='thread'"]),
        (nested(), ["nested.<locals>.inner", "closure", "offload='thread'"]),
        (functools.partial(lambda x: x), ["cannot be pickled", "offload='thread'"]),
        (local_callable_object(), ["cannot be pickled", "offload='thread'"]),
    ],
    ids=["lambda", "nested", "partial-of-lambda", "local-callable-object"],
)
async def test_unpicklable_function_is_rejected_before_work_starts(
    pool: corral.ProcessPool, fn: Callable[[int], int], words: list[str]
) -> None:
    for attempt in (
        lambda: pool.run(fn, 1),
        lambda: corral.map(fn, range(3), offload=pool),
        lambda: corral.map(fn, range(3), offload="process"),
    ):
        with pytest.raises(corral.NotPicklableError) as info:
            await attempt()
        assert isinstance(info.value, TypeError)
        for word in words:
            assert word in str(info.value)
    with pytest.raises(corral.NotPicklableError):
        corral.imap(fn, range(3), offload=pool)


@pytest.mark.parametrize("fn", [async_square, async_numbers], ids=["coroutine", "async-gen"])
async def test_async_function_with_processes_is_a_type_error(
    pool: corral.ProcessPool, fn: Callable[[int], Any]
) -> None:
    with pytest.raises(TypeError, match="async function") as info:
        await pool.run(fn, 1)
    assert not isinstance(info.value, corral.NotPicklableError)
    with pytest.raises(TypeError, match="async function"):
        await corral.map(fn, range(3), offload="process")
    with pytest.raises(TypeError, match="async function"):
        await corral.map(fn, range(3), offload=pool)


async def test_wrapped_async_function_is_recognised(pool: corral.ProcessPool) -> None:
    wrapped = proc_helpers.passthrough(async_square)
    with pytest.raises(TypeError, match="async function"):
        await pool.run(wrapped, 1)


# -- pre-flight checks of the arguments ------------------------------------------------------


async def test_lock_argument_is_named(pool: corral.ProcessPool) -> None:
    with pytest.raises(corral.NotPicklableError) as info:
        await pool.run(helpers.add, 1, threading.Lock())
    message = str(info.value)
    assert "argument 1" in message
    assert "add" in message
    assert "lock" in message.lower()
    assert "offload='thread'" in message
    assert isinstance(info.value.__cause__, TypeError)


async def test_open_file_argument_is_named(pool: corral.ProcessPool, tmp_path: Path) -> None:
    with (tmp_path / "f.txt").open("w") as f, pytest.raises(corral.NotPicklableError) as info:
        await pool.run(helpers.square, f)
    assert "argument 0" in str(info.value)
    assert "TextIOWrapper" in str(info.value)


async def test_unpicklable_keyword_argument_is_named(pool: corral.ProcessPool) -> None:
    with pytest.raises(corral.NotPicklableError, match="keyword argument 'c'"):
        await pool.run(helpers.add, 1, c=threading.Lock())


async def test_unpicklable_item_in_map_is_raised_with_its_position(
    pool: corral.ProcessPool,
) -> None:
    with pytest.raises(corral.NotPicklableError, match="argument 0"):
        await corral.map(helpers.square, [threading.Lock()], offload=pool)


def test_not_picklable_error_is_a_type_error_and_a_corral_error() -> None:
    assert issubclass(corral.NotPicklableError, TypeError)
    assert issubclass(corral.NotPicklableError, corral.CorralError)


async def test_function_from_an_interactive_main_is_rejected(
    pool: corral.ProcessPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An interactive session's __main__ has no __file__, so workers cannot import from it.
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))

    def typed_at_the_prompt(x: int) -> int:
        return x

    typed_at_the_prompt.__module__ = "__main__"
    typed_at_the_prompt.__qualname__ = "typed_at_the_prompt"
    with pytest.raises(corral.NotPicklableError, match="interactive session"):
        await pool.run(typed_at_the_prompt, 1)


# -- naming what a pickle refers to ----------------------------------------------------------


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_pickled_globals_names_the_classes_a_pickle_refers_to(protocol: int) -> None:
    value = [
        decimal.Decimal(1),
        proc_helpers.CodedError(1, "a"),
        proc_helpers.CodedError(2, "b"),  # named once
        proc_helpers.Multiplier(3),  # the module's name comes from the memo
    ]
    names = pickled_globals(pickle.dumps(value, protocol), limit=10)
    assert "decimal.Decimal" in names
    assert names.count("proc_helpers.CodedError") == 1
    assert "proc_helpers.Multiplier" in names


def test_pickled_globals_of_plain_values_and_of_garbage() -> None:
    assert pickled_globals(pickle.dumps([1, "a", (2.0, None)])) == []
    assert pickled_globals(pickle.dumps(proc_helpers.CodedError(1, "a"))[:-3]) == [
        "proc_helpers.CodedError"
    ]
    assert pickled_globals(b"not a pickle") == []
    assert len(pickled_globals(pickle.dumps([ValueError(), KeyError(), TypeError()]), 2)) == 2

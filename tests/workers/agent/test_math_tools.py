import json
import math
from pathlib import Path

import pytest

from workers.agent.schema import docstring_parts
from workers.agent.tools import REGISTRY, get_callable
from workers.agent.tools import math_tools as m
from workers.agent.tools.calculator import CalculatorError, calculator
from workers.agent.tools.datetime_tools import add_days, current_datetime, date_difference

LIBRARY = Path(__file__).resolve().parents[4] / "shared" / "data" / "tulip-math-tools" / "tools_math_tools_100.json"
JSON_TYPES = {"float": "number", "int": "integer", "list[float]": "array", "list[int]": "array"}


@pytest.mark.skipif(not LIBRARY.exists(), reason="the shared tulip-math-tools data is not on this machine")
def test_it_implements_every_tool_of_the_tulip_library_with_its_name_and_signature():
    library = json.loads(LIBRARY.read_text())
    assert len(library) == 100
    for entry in library:
        tool = REGISTRY[entry["name"]]
        assert tool.pack == "math"
        assert list(tool.parameters["properties"]) == [p["name"] for p in entry["parameters"]], entry["name"]
        for parameter in entry["parameters"]:
            assert tool.parameters["properties"][parameter["name"]]["type"] == JSON_TYPES[parameter["type"]]
        assert tool.description == docstring_parts(tool.function)[0]
        assert " ".join(entry["description"].split(":param")[0].split(":return")[0].split()) == tool.description


@pytest.mark.parametrize(
    ("name", "args", "expected"),
    [
        ("area_rectangle", (8, 5), 40),
        ("circumference_circle", (7,), 43.982),
        ("volume_sphere", (6,), 904.779),
        ("area_of_hexagon", (4,), 41.569),
        ("area_of_ellipse", (10, 5), 39.270),
        ("simple_interest", (5000, 0.05, 3), 750),
        ("sum_of_natural_numbers", (100,), 5050),
        ("surface_area_cube", (4,), 96),
        ("fibonacci_recursive", (10,), 55),
        ("factorial", (10,), 3628800),
        ("standard_deviation", ([78.54, 64, 93.53],), 12.056),
        ("nth_root", (216, 3), 6.0),
        ("nth_root", (-8, 3), -2.0),
        ("log", (8, 2), 3.0),
        ("log", (math.e,), 1.0),
        ("gcd_extended", (240, 46), (-9, 47, 2)),
        ("lcm_extended", (4, 6), 12),
        ("prime_factors", (360,), [2, 2, 2, 3, 3, 5]),
        ("nth_prime", (6,), 13),
        ("euler_totient_function", (36,), 12),
        ("pascals_triangle_row", (4,), [1, 4, 6, 4, 1]),
        ("catalan_number", (5,), 42),
        ("digital_root", (9875,), 2),
        ("is_armstrong_number", (153,), True),
        ("is_perfect_number", (28,), True),
        ("median", ([3, 1, 2],), 2.0),
        ("mode", ([1, 2, 2, 3, 3],), [2.0, 3.0]),
        ("interquartile_range", ([1, 2, 3, 4, 5, 6, 7, 8],), 4.0),
        ("pythagorean_triples", (13,), [(3, 4, 5), (5, 12, 13), (6, 8, 10)]),
        ("sum_of_geometric_sequence", (3, 1, 2), 7.0),
        ("compound_interest", (1000, 0.1, 1, 2), 1210.0),
        ("quadratic_formula", (1, -3, 2), (2.0, 1.0)),
        ("euler_number_approximation", (15,), math.e),
        ("sum_of_even_numbers", ([1, 2, 3, 4],), 6),
        ("number_of_divisors", (12,), 6),
        ("sum_of_divisors", (12,), 28),
    ],
)
def test_it_computes_what_the_docstrings_promise(name, args, expected):
    result = get_callable(name)(*args)
    if isinstance(expected, float):
        assert result == pytest.approx(expected, abs=1e-3)
    else:
        assert result == expected


def test_it_refuses_inputs_that_would_run_for_minutes():
    with pytest.raises(ValueError, match="too large"):
        m.factorial(10_000_000)
    with pytest.raises(ValueError, match="too large"):
        m.prime_sieve(10**12)
    with pytest.raises(OverflowError):
        m.power(10, 10**9)


def test_it_names_the_packs_for_an_unknown_callable():
    with pytest.raises(KeyError, match="packs: calculator, datetime, math"):
        get_callable("launch_rockets")


def test_it_evaluates_arithmetic_with_the_ast_never_eval():
    assert calculator("(3 + 4) * 2 / sqrt(16)") == 3.5
    assert calculator("2^10 - 24") == 1000
    assert calculator("max(2, 3) * pi") == pytest.approx(3 * math.pi)
    for hostile in ("__import__('os').system('true')", "().__class__", "open('x')", "[x for x in (1,)]", "a + 1"):
        with pytest.raises(CalculatorError):
            calculator(hostile)


def test_it_bounds_huge_powers_and_reports_division_by_zero():
    with pytest.raises(CalculatorError, match="too large"):
        calculator("9**9**9")
    with pytest.raises(CalculatorError, match="division by zero"):
        calculator("1/0")


def test_it_does_date_arithmetic_and_knows_time_zones():
    assert date_difference("2026-01-01", "2026-03-01") == 59
    assert add_days("2026-02-27", 2) == "2026-03-01 (Sunday)"
    assert current_datetime("Asia/Tokyo")[19:25] == "+09:00"
    with pytest.raises(ValueError, match="unknown time zone"):
        current_datetime("Mars/Olympus")

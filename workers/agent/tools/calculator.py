"""A safe arithmetic calculator: the expression is parsed with ``ast`` and walked, never eval'd.

Numbers, + - * / // % **, unary signs, parentheses, the constants pi/e/tau and a few functions
(sqrt, sin, cos, tan, asin, acos, atan, log, log10, log2, exp, abs, round, floor, ceil, min,
max, factorial). Anything else (names, attributes, calls to other functions, comprehensions)
is refused. Integer powers are bounded so "9**9**9" cannot eat the machine.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

MAX_EXPRESSION_CHARS = 500
MAX_INT_EXPONENT = 10_000
MAX_INT_DIGITS = 10_000

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _factorial(n):
    if isinstance(n, float) and n.is_integer():
        n = int(n)
    if not isinstance(n, int) or n < 0 or n > 5000:
        raise ValueError("factorial needs a whole number between 0 and 5000")
    return math.factorial(n)


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt, "sin": math.sin, "cos": math.cos, "tan": math.tan, "asin": math.asin,
    "acos": math.acos, "atan": math.atan, "log": math.log, "log10": math.log10, "log2": math.log2,
    "exp": math.exp, "abs": abs, "round": round, "floor": math.floor, "ceil": math.ceil,
    "min": min, "max": max, "factorial": _factorial,
}


class CalculatorError(ValueError):
    pass


def _power(base, exponent):
    if isinstance(base, int) and isinstance(exponent, int):
        if abs(exponent) > MAX_INT_EXPONENT or (
            exponent > 0 and abs(base) > 1 and exponent * math.log10(abs(base)) > MAX_INT_DIGITS
        ):
            raise CalculatorError("the result would be too large")
    return operator.pow(base, exponent)


def _eval(node: ast.AST):
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            return _power(left, right)
        if isinstance(node.op, ast.Mult) and isinstance(left, int) and isinstance(right, int):
            if len(str(abs(left))) + len(str(abs(right))) > MAX_INT_DIGITS:
                raise CalculatorError("the result would be too large")
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
    ):
        return _FUNCTIONS[node.func.id](*[_eval(arg) for arg in node.args])
    raise CalculatorError(f"not allowed in a calculation: {ast.dump(node)[:60]}")


def calculator(expression: str) -> float:
    """Evaluate an arithmetic expression, e.g. "(3 + 4) * 2 / sqrt(16)" or "2**10 - log(e)".

    :param expression: The arithmetic expression: numbers, + - * / // % ** and parentheses, the
        constants pi and e, and the functions sqrt, sin, cos, tan, log, exp, abs, round, min, max, factorial.
    :return: The value of the expression.
    """
    if not isinstance(expression, str) or not expression.strip():
        raise CalculatorError("the expression is empty")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    text = expression.strip().replace("^", "**").replace("×", "*").replace("÷", "/")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise CalculatorError(f"not a valid expression: {exc.msg}") from exc
    try:
        return _eval(tree)
    except ZeroDivisionError as exc:
        raise CalculatorError("division by zero") from exc
    except OverflowError as exc:
        raise CalculatorError("the result is too large") from exc


CALCULATOR_TOOLS = [calculator]

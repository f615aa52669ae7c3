"""The Tulip math tool pack: 100 plain math functions, Django-free.

Names, signatures and docstrings follow ``tools_math_tools_100.json`` from tulip-math-tools
(HRI-EU/tulip_agent, src/eval/math_eval/math_tools.py); the function bodies are Parsimony's own.
The docstrings are the tool descriptions the library search embeds, and their ``:param`` lines
become the parameter descriptions of each tool's JSON schema (see ``workers.agent.schema``).

Copyright (c) 2024-2025, Honda Research Institute Europe GmbH. All rights reserved.
(Tool descriptions, BSD-3-Clause: redistribution must keep this notice; no warranty.)

Conventions where a docstring leaves room: "axis" lengths of an ellipse are full axes (the
semi-axes are their halves); variance and standard deviation are the population ones; the
interquartile range uses Tukey's hinges; ``gcd_extended`` returns ``(x, y, gcd)``; Fibonacci
starts 0, 1; Pascal's rows count from 0. Inputs large enough to run for minutes (a factorial
of ten million, a sieve up to 10^12) are refused with a ValueError: tools run in threads
that a timeout cannot kill, so they must not start unbounded work.
"""

from __future__ import annotations

import cmath
import math
import statistics
from collections.abc import Callable
from typing import Any

_MAX_FACTORIAL = 5_000
_MAX_SEQUENCE = 10_000
_MAX_RECURSION = 500
_MAX_NTH_PRIME = 200_000
_MAX_SIEVE = 5_000_000
_MAX_FACTOR = 10**12
_MAX_TRIPLES = 2_000


def _int(value, *, maximum: int | None = None) -> int:
    """An integer argument: whole floats (8.0) and numeric strings pass, 8.5 does not."""
    if isinstance(value, bool):
        raise TypeError("expected an integer, got a boolean")
    if isinstance(value, str):
        value = float(value) if any(c in value for c in ".eE") else int(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"expected an integer, got {value}")
        value = int(value)
    if not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    if maximum is not None and abs(value) > maximum:
        raise ValueError(f"{value} is too large for this tool (at most {maximum})")
    return value


def _num(value) -> float | int:
    """A number argument, kept an int when it is one (exact sums and products of integers)."""
    if isinstance(value, bool):
        raise TypeError("expected a number, got a boolean")
    if isinstance(value, int):
        if abs(value) > 10**100:
            return float(value)
        return value
    return float(value)


def _nums(values, *, nonempty: bool = False) -> list[float]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError("expected a list of numbers")
    result = [float(_num(v)) for v in values]
    if nonempty and not result:
        raise ValueError("the list of numbers is empty")
    return result


def _ints(values) -> list[int]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError("expected a list of integers")
    return [_int(v) for v in values]


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n < 4:
        return True
    if n % 2 == 0 or n % 3 == 0:
        return False
    if n > _MAX_FACTOR:
        raise ValueError(f"{n} is too large for this tool (at most {_MAX_FACTOR})")
    i = 5
    while i * i <= n:
        if n % i == 0 or n % (i + 2) == 0:
            return False
        i += 6
    return True


def _sieve(limit: int) -> list[int]:
    if limit < 2:
        return []
    flags = bytearray([1]) * (limit + 1)
    flags[0] = flags[1] = 0
    for i in range(2, math.isqrt(limit) + 1):
        if flags[i]:
            flags[i * i :: i] = bytearray(len(range(i * i, limit + 1, i)))
    return [i for i, flag in enumerate(flags) if flag]


def _divisors(n: int) -> list[int]:
    small, large = [], []
    for d in range(1, math.isqrt(n) + 1):
        if n % d == 0:
            small.append(d)
            if d != n // d:
                large.append(n // d)
    return small + large[::-1]


def _sum_of_divisors(n: int) -> int:
    return sum(_divisors(n))


def _fibonacci(n: int) -> tuple[int, int]:
    """(F(n), F(n+1)) by fast doubling: recursive, log2(n) deep."""
    if n == 0:
        return (0, 1)
    a, b = _fibonacci(n >> 1)
    c = a * (2 * b - a)
    d = a * a + b * b
    return (d, c + d) if n & 1 else (c, d)


def add(a: float, b: float) -> float:
    """Add two numbers.

    :param a: The first number.
    :param b: The second number.
    :return: The sum of a and b.
    """
    return _num(a) + _num(b)


def subtract(a: float, b: float) -> float:
    """Subtract two numbers.

    :param a: The number to be subtracted from.
    :param b: The number to subtract.
    :return: The difference of a and b.
    """
    return _num(a) - _num(b)


def multiply(a: float, b: float) -> float:
    """Multiply two numbers.

    :param a: The first multiplicand.
    :param b: The second multiplicand.
    :return: The product of a and b.
    """
    return _num(a) * _num(b)


def divide(a: float, b: float) -> float:
    """Divide two numbers.

    :param a: The dividend.
    :param b: The divisor.
    :return: The quotient of a and b.
    """
    return _num(a) / _num(b)


def modulus(a: float, b: float) -> float:
    """Find the modulus of two numbers.

    :param a: The dividend.
    :param b: The divisor.
    :return: The remainder of the division of a by b.
    """
    return _num(a) % _num(b)


def power(base: float, exponent: float) -> float:
    """Raise a number to the power of another.

    :param base: The base number.
    :param exponent: The exponent.
    :return: The result of raising base to the power of exponent.
    """
    return float(base) ** float(exponent)


def sqrt(number: float) -> float:
    """Calculate the square root of a number.

    :param number: The number to find the square root of.
    :return: The square root of the number.
    """
    return math.sqrt(float(number))


def absolute(number: float) -> float:
    """Find the absolute value of a number.

    :param number: The number to find the absolute value of.
    :return: The absolute value of the number.
    """
    return abs(_num(number))


def factorial(number: int) -> int:
    """Calculate the factorial of a number.

    :param number: The number to find the factorial of.
    :return: The factorial of the number.
    """
    return math.factorial(_int(number, maximum=_MAX_FACTORIAL))


def gcd(a: int, b: int) -> int:
    """Compute the greatest common divisor of a and b.

    :param a: The first number.
    :param b: The second number.
    :return: The greatest common divisor of a and b.
    """
    return math.gcd(_int(a), _int(b))


def lcm(a: int, b: int) -> int:
    """Compute the least common multiple of a and b.

    :param a: The first number.
    :param b: The second number.
    :return: The least common multiple of a and b.
    """
    return math.lcm(_int(a), _int(b))


def is_prime(number: int) -> bool:
    """Check if a number is prime.

    :param number: The number to check.
    :return: True if the number is prime, False otherwise.
    """
    return _is_prime(_int(number))


def fibonacci_sequence(n: int) -> list:
    """Generate a list of Fibonacci numbers up to the nth number.

    :param n: The length of the Fibonacci sequence to generate.
    :return: A list containing the Fibonacci sequence up to the nth number.
    """
    n = _int(n, maximum=_MAX_SEQUENCE)
    sequence: list[int] = []
    x, y = 0, 1
    for _ in range(max(n, 0)):
        sequence.append(x)
        x, y = y, x + y
    return sequence


def prime_factors(number: int) -> list:
    """Find all prime factors of a number.

    :param number: The number to find the prime factors of.
    :return: A list of the prime factors of the number.
    """
    n = abs(_int(number, maximum=_MAX_FACTOR))
    factors: list[int] = []
    d = 2
    while d * d <= n:
        while n % d == 0:
            factors.append(d)
            n //= d
        d += 1
    if n > 1:
        factors.append(n)
    return factors


def cosine(angle: float) -> float:
    """Calculate the cosine of an angle in radians.

    :param angle: The angle in radians.
    :return: The cosine of the angle.
    """
    return math.cos(float(angle))


def sine(angle: float) -> float:
    """Calculate the sine of an angle in radians.

    :param angle: The angle in radians.
    :return: The sine of the angle.
    """
    return math.sin(float(angle))


def tangent(angle: float) -> float:
    """Calculate the tangent of an angle in radians.

    :param angle: The angle in radians.
    :return: The tangent of the angle.
    """
    return math.tan(float(angle))


def log(number: float, base: float = math.e) -> float:
    """Calculate the logarithm of a number with given base.

    :param number: The number to calculate the logarithm for.
    :param base: The base of the logarithm. Defaults to Euler's number.
    :return: The logarithm of the number with the given base.
    """
    return math.log(float(number), float(base))


def radians_to_degrees(radians: float) -> float:
    """Convert radians to degrees.

    :param radians: The angle in radians.
    :return: The angle in degrees.
    """
    return math.degrees(float(radians))


def degrees_to_radians(degrees: float) -> float:
    """Convert degrees to radians.

    :param degrees: The angle in degrees.
    :return: The angle in radians.
    """
    return math.radians(float(degrees))


def hypotenuse(a: float, b: float) -> float:
    """Calculate the hypotenuse of a right-angled triangle.

    :param a: One side of the triangle.
    :param b: The other side of the triangle.
    :return: The length of the hypotenuse.
    """
    return math.hypot(float(a), float(b))


def area_circle(radius: float) -> float:
    """Calculate the area of a circle.

    :param radius: The radius of the circle.
    :return: The area of the circle.
    """
    return math.pi * float(radius) ** 2


def circumference_circle(radius: float) -> float:
    """Calculate the circumference of a circle.

    :param radius: The radius of the circle.
    :return: The circumference of the circle.
    """
    return 2 * math.pi * float(radius)


def area_rectangle(length: float, width: float) -> float:
    """Calculate the area of a rectangle.

    :param length: The length of the rectangle.
    :param width: The width of the rectangle.
    :return: The area of the rectangle.
    """
    return _num(length) * _num(width)


def perimeter_rectangle(length: float, width: float) -> float:
    """Calculate the perimeter of a rectangle.

    :param length: The length of the rectangle.
    :param width: The width of the rectangle.
    :return: The perimeter of the rectangle.
    """
    return 2 * (_num(length) + _num(width))


def area_triangle(base: float, height: float) -> float:
    """Calculate the area of a triangle.

    :param base: The base of the triangle.
    :param height: The height of the triangle.
    :return: The area of the triangle.
    """
    return 0.5 * float(base) * float(height)


def perimeter_triangle(sides: list[float]) -> float:
    """Calculate the perimeter of a triange.

    :param sides: List of the lengths of the triangle's sides.
    :return: The perimeter of the triangle.
    """
    return sum(_nums(sides))


def quadratic_formula(a: float, b: float, c: float) -> tuple:
    """Solve a quadratic equation using the quadratic formula.

    :param a: The coefficient of x^2.
    :param b: The coefficient of x.
    :param c: The constant term.
    :return: A tuple containing the two solutions.
    """
    a, b, c = float(a), float(b), float(c)
    if a == 0:
        raise ValueError("a must not be 0 in a quadratic equation")
    discriminant = b * b - 4 * a * c
    root: float | complex
    if discriminant >= 0:
        root = math.sqrt(discriminant)
    else:
        root = cmath.sqrt(discriminant)
    return ((-b + root) / (2 * a), (-b - root) / (2 * a))


def perimeter_square(side_length: float) -> float:
    """Calculate the perimeter of a square.

    :param side_length: The length of a side of the square.
    :return: The perimeter of the square.
    """
    return 4 * _num(side_length)


def area_square(side_length: float) -> float:
    """Calculate the area of a square.

    :param side_length: The length of a side of the square.
    :return: The area of the square.
    """
    return _num(side_length) ** 2


def area_parallelogram(base: float, height: float) -> float:
    """Calculate the area of a parallelogram.

    :param base: The length of the base of the parallelogram.
    :param height: The height of the parallelogram.
    :return: The area of the parallelogram.
    """
    return _num(base) * _num(height)


def volume_cube(side_length: float) -> float:
    """Calculate the volume of a cube.

    :param side_length: The length of a side of the cube.
    :return: The volume of the cube.
    """
    return _num(side_length) ** 3


def volume_sphere(radius: float) -> float:
    """Calculate the volume of a sphere.

    :param radius: The radius of the sphere.
    :return: The volume of the sphere.
    """
    return 4 / 3 * math.pi * float(radius) ** 3


def volume_cylinder(radius: float, height: float) -> float:
    """Calculate the volume of a cylinder.

    :param radius: The radius of the cylinder's base.
    :param height: The height of the cylinder.
    :return: The volume of the cylinder.
    """
    return math.pi * float(radius) ** 2 * float(height)


def surface_area_of_cylinder(radius: float, height: float) -> float:
    """Calculate the surface area of a cylinder.

    :param radius: The radius of the cylinder's base.
    :param height: The height of the cylinder.
    :return: The surface area of the cylinder.
    """
    radius, height = float(radius), float(height)
    return 2 * math.pi * radius * (radius + height)


def volume_cone(radius: float, height: float) -> float:
    """Calculate the volume of a cone.

    :param radius: The radius of the cone's base.
    :param height: The height of the cone.
    :return: The volume of the cone.
    """
    return math.pi * float(radius) ** 2 * float(height) / 3


def surface_area_cube(side_length: float) -> float:
    """Calculate the surface area of a cube.

    :param side_length: The length of a side of the cube.
    :return: The surface area of the cube.
    """
    return 6 * _num(side_length) ** 2


def surface_area_sphere(radius: float) -> float:
    """Calculate the surface area of a sphere.

    :param radius: The radius of the sphere.
    :return: The surface area of the sphere.
    """
    return 4 * math.pi * float(radius) ** 2


def nth_root(number: float, root: float) -> float:
    """Calculate the nth root of a number.

    :param number: The number to find the root of.
    :param root: The degree of the root.
    :return: The nth root of the number.
    """
    number, root = float(number), float(root)
    if root == 0:
        raise ValueError("the degree of the root must not be 0")
    if number < 0 and float(root).is_integer() and int(root) % 2 == 1:
        return -((-number) ** (1 / root))
    return number ** (1 / root)


def sum_of_natural_numbers(n: int) -> int:
    """Calculate the sum of the first n natural numbers.

    :param n: The number of terms.
    :return: The sum of the first n natural numbers.
    """
    n = _int(n)
    return n * (n + 1) // 2


def sum_of_squares(n: int) -> int:
    """Calculate the sum of the squares of the first n natural numbers.

    :param n: The number of terms.
    :return: The sum of the squares of the first n natural numbers.
    """
    n = _int(n)
    return n * (n + 1) * (2 * n + 1) // 6


def sum_of_cubes(n: int) -> int:
    """Calculate the sum of the cubes of the first n natural numbers.

    :param n: The number of terms.
    :return: The sum of the cubes, which is (n(n+1)/2)^2.
    """
    n = _int(n)
    return (n * (n + 1) // 2) ** 2


def is_even(number: int) -> bool:
    """Check if a number is even.

    :param number: The number to check.
    :return: True if the number is even, False otherwise.
    """
    return _int(number) % 2 == 0


def is_odd(number: int) -> bool:
    """Check if a number is odd.

    :param number: The number to check.
    :return: True if the number is odd, False otherwise.
    """
    return _int(number) % 2 == 1


def sum_of_arithmetic_sequence(n: int, a1: float, d: float) -> float:
    """Calculate the sum of the first n terms of an arithmetic sequence.

    :param n: The number of terms.
    :param a1: The first term of the sequence.
    :param d: The common difference between terms.
    :return: The sum of the first n terms.
    """
    n = _int(n)
    return n / 2 * (2 * float(a1) + (n - 1) * float(d))


def nth_term_arithmetic_sequence(n: int, a1: float, d: float) -> float:
    """Calculate the nth term of an arithmetic sequence.

    :param n: The term number to find.
    :param a1: The first term of the sequence.
    :param d: The common difference between terms.
    :return: The nth term of the sequence.
    """
    return float(a1) + (_int(n) - 1) * float(d)


def sum_of_geometric_sequence(n: int, a1: float, r: float) -> float:
    """Calculate the sum of the first n terms of a geometric sequence.

    :param n: The number of terms.
    :param a1: The first term of the sequence.
    :param r: The common ratio between terms.
    :return: The sum of the first n terms.
    """
    n, a1, r = _int(n), float(a1), float(r)
    if r == 1:
        return n * a1
    return a1 * (1 - r**n) / (1 - r)


def nth_term_geometric_sequence(n: int, a1: float, r: float) -> float:
    """Calculate the nth term of a geometric sequence.

    :param n: The term number to find.
    :param a1: The first term of the sequence.
    :param r: The common ratio between terms.
    :return: The nth term of the sequence.
    """
    return float(a1) * float(r) ** (_int(n) - 1)


def compound_interest(principal: float, rate: float, times_compounded: int, years: int) -> float:
    """Calculate compound interest.

    :param principal: The initial amount of money.
    :param rate: The annual interest rate (as a decimal).
    :param times_compounded: The number of times the interest is compounded per year.
    :param years: The number of years the money is invested or borrowed for.
    :return: The amount of money accumulated after n years, including interest.
    """
    n = _int(times_compounded)
    if n < 1:
        raise ValueError("times_compounded must be at least 1")
    return float(principal) * (1 + float(rate) / n) ** (n * float(years))


def simple_interest(principal: float, rate: float, years: int) -> float:
    """Calculate simple interest.

    :param principal: The principal amount.
    :param rate: The annual interest rate (as a decimal).
    :param years: The time in years.
    :return: The simple interest generated.
    """
    return float(principal) * float(rate) * float(years)


def convert_celsius_to_fahrenheit(celsius: float) -> float:
    """Convert temperature from Celsius to Fahrenheit.

    :param celsius: The temperature in Celsius.
    :return: The temperature in Fahrenheit.
    """
    return float(celsius) * 9 / 5 + 32


def convert_fahrenheit_to_celsius(fahrenheit: float) -> float:
    """Convert temperature from Fahrenheit to Celsius.

    :param fahrenheit: The temperature in Fahrenheit.
    :return: The temperature in Celsius.
    """
    return (float(fahrenheit) - 32) * 5 / 9


def area_of_rhombus(diagonal1: float, diagonal2: float) -> float:
    """Calculate the area of a rhombus given its diagonals.

    :param diagonal1: The length of the first diagonal.
    :param diagonal2: The length of the second diagonal.
    :return: The area of the rhombus.
    """
    return float(diagonal1) * float(diagonal2) / 2


def perimeter_of_hexagon(side: float) -> float:
    """Calculate the perimeter of a regular hexagon.

    :param side: The length of a side of the hexagon.
    :return: The perimeter of the hexagon.
    """
    return 6 * _num(side)


def area_of_hexagon(side: float) -> float:
    """Calculate the area of a regular hexagon.

    :param side: The length of a side of the hexagon.
    :return: The area of the hexagon.
    """
    return 3 * math.sqrt(3) / 2 * float(side) ** 2


def area_of_ellipse(major_axis: float, minor_axis: float) -> float:
    """Calculate the area of an ellipse.

    :param major_axis: The length of the major axis.
    :param minor_axis: The length of the minor axis.
    :return: The area of the ellipse.
    """
    # The axes are full lengths: the semi-axes are their halves.
    return math.pi * (float(major_axis) / 2) * (float(minor_axis) / 2)


def perimeter_of_ellipse(major_axis: float, minor_axis: float) -> float:
    """Approximate the perimeter of an ellipse (Ramanujan's first approximation).

    :param major_axis: The length of the major axis.
    :param minor_axis: The length of the minor axis.
    :return: An approximation of the perimeter of the ellipse.
    """
    a, b = float(major_axis) / 2, float(minor_axis) / 2
    return math.pi * (3 * (a + b) - math.sqrt((3 * a + b) * (a + 3 * b)))


def volume_of_prism(base_area: float, height: float) -> float:
    """Calculate the volume of a prism.

    :param base_area: The area of the base of the prism.
    :param height: The height of the prism.
    :return: The volume of the prism.
    """
    return _num(base_area) * _num(height)


def surface_area_of_prism(base_perimeter: float, base_area: float, height: float) -> float:
    """Calculate the surface area of a prism.

    :param base_perimeter: The perimeter of the base of the prism.
    :param base_area: The area of the base.
    :param height: The height of the prism.
    :return: The surface area of the prism.
    """
    return 2 * _num(base_area) + _num(base_perimeter) * _num(height)


def volume_of_pyramid(base_area: float, height: float) -> float:
    """Calculate the volume of a pyramid.

    :param base_area: The area of the base of the pyramid.
    :param height: The height of the pyramid from the base to the apex.
    :return: The volume of the pyramid.
    """
    return float(base_area) * float(height) / 3


def surface_area_of_pyramid(base_area: float, lateral_area: float) -> float:
    """Calculate the surface area of a pyramid.

    :param base_area: The area of the base of the pyramid.
    :param lateral_area: The total area of the lateral faces.
    :return: The total surface area of the pyramid.
    """
    return _num(base_area) + _num(lateral_area)


def volume_of_torus(major_radius: float, minor_radius: float) -> float:
    """Calculate the volume of a torus.

    :param major_radius: The major radius of the torus (distance from the center of the tube to the
        center of the torus).
    :param minor_radius: The minor radius of the torus (radius of the tube).
    :return: The volume of the torus.
    """
    return 2 * math.pi**2 * float(major_radius) * float(minor_radius) ** 2


def surface_area_of_torus(major_radius: float, minor_radius: float) -> float:
    """Calculate the surface area of a torus.

    :param major_radius: The major radius of the torus.
    :param minor_radius: The minor radius of the torus.
    :return: The surface area of the torus.
    """
    return 4 * math.pi**2 * float(major_radius) * float(minor_radius)


def harmonic_mean(numbers: list[float]) -> float:
    """Calculate the harmonic mean of a list of numbers.

    :param numbers: A list of numbers.
    :return: The harmonic mean.
    """
    values = _nums(numbers, nonempty=True)
    if any(v == 0 for v in values):
        raise ValueError("the harmonic mean is undefined when a number is 0")
    return len(values) / sum(1 / v for v in values)


def geometric_mean(numbers: list[float]) -> float:
    """Calculate the geometric mean of a list of numbers.

    :param numbers: A list of numbers.
    :return: The geometric mean.
    """
    values = _nums(numbers, nonempty=True)
    if any(v < 0 for v in values):
        raise ValueError("the geometric mean needs non-negative numbers")
    if any(v == 0 for v in values):
        return 0.0
    return math.exp(sum(math.log(v) for v in values) / len(values))


def euler_number_approximation(iterations: int) -> float:
    """Approximate Euler's number using a series expansion.

    :param iterations: The number of terms to include in the approximation.
    :return: An approximation of Euler's number.
    """
    iterations = _int(iterations, maximum=_MAX_SEQUENCE)
    total, term = 0.0, 1.0
    for k in range(max(iterations, 0)):
        if k:
            term /= k
        total += term
    return total


def is_perfect_number(number: int) -> bool:
    """Check if a number is a perfect number.

    :param number: The number to check.
    :return: True if the number is perfect, False otherwise.
    """
    number = _int(number, maximum=_MAX_FACTOR)
    return number > 1 and _sum_of_divisors(number) - number == number


def is_armstrong_number(number: int) -> bool:
    """Check if a number is an Armstrong number.

    :param number: The number to check.
    :return: True if the number is an Armstrong number, False otherwise.
    """
    number = _int(number)
    if number < 0:
        return False
    digits = str(number)
    return sum(int(d) ** len(digits) for d in digits) == number


def nth_prime(n: int) -> int:
    """Find the nth prime number.

    :param n: The nth position.
    :return: The nth prime number.
    """
    n = _int(n, maximum=_MAX_NTH_PRIME)
    if n < 1:
        raise ValueError("n must be at least 1")
    limit = 15 if n < 6 else int(n * (math.log(n) + math.log(math.log(n)))) + 1
    return _sieve(limit)[n - 1]


def pascals_triangle_row(n: int) -> list:
    """Generate the nth row of Pascal's triangle.

    :param n: The row number to generate.
    :return: A list representing the nth row of Pascal's triangle.
    """
    n = _int(n, maximum=_MAX_SEQUENCE)
    if n < 0:
        raise ValueError("the row number must be at least 0")
    return [math.comb(n, k) for k in range(n + 1)]


def binomial_coefficient(n: int, k: int) -> int:
    """Calculate the binomial coefficient "n choose k".

    :param n: The number of items.
    :param k: The number of items to choose.
    :return: The binomial coefficient.
    """
    return math.comb(_int(n, maximum=_MAX_SEQUENCE), _int(k))


def mean_absolute_deviation(numbers: list[float]) -> float:
    """Calculate the mean absolute deviation of a list of numbers.

    :param numbers: A list of numbers.
    :return: The mean absolute deviation.
    """
    values = _nums(numbers, nonempty=True)
    mean = sum(values) / len(values)
    return sum(abs(v - mean) for v in values) / len(values)


def standard_deviation(numbers: list[float]) -> float:
    """Calculate the standard deviation of a list of numbers.

    :param numbers: A list of numbers.
    :return: The standard deviation.
    """
    return math.sqrt(variance(numbers))


def variance(numbers: list[float]) -> float:
    """Calculate the variance of a list of numbers.

    :param numbers: A list of numbers.
    :return: The variance.
    """
    # The population variance (divide by n).
    values = _nums(numbers, nonempty=True)
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values) / len(values)


def coefficient_of_variation(numbers: list[float]) -> float:
    """Calculate the coefficient of variation of a list of numbers.

    :param numbers: A list of numbers.
    :return: The coefficient of variation.
    """
    values = _nums(numbers, nonempty=True)
    mean = sum(values) / len(values)
    if mean == 0:
        raise ValueError("the coefficient of variation is undefined when the mean is 0")
    return standard_deviation(values) / mean


def median(numbers: list[float]) -> float:
    """Calculate the median of a list of numbers.

    :param numbers: A list of sorted numbers.
    :return: The median.
    """
    return float(statistics.median(_nums(numbers, nonempty=True)))


def mode(numbers: list[float]) -> list:
    """Calculate the mode(s) of a list of numbers.

    :param numbers: A list of numbers.
    :return: A list of modes.
    """
    return [float(v) for v in statistics.multimode(_nums(numbers, nonempty=True))]


def interquartile_range(numbers: list[float]) -> float:
    """Calculate the interquartile range of a list of numbers.

    :param numbers: A list of sorted numbers.
    :return: The interquartile range.
    """
    # Tukey's hinges: the medians of the lower and the upper half (the middle value excluded).
    values = sorted(_nums(numbers, nonempty=True))
    if len(values) < 2:
        return 0.0
    half = len(values) // 2
    return float(statistics.median(values[-half:]) - statistics.median(values[:half]))


def range_of_numbers(numbers: list[float]) -> float:
    """Calculate the range of a list of numbers.

    :param numbers: A list of numbers.
    :return: The range.
    """
    values = _nums(numbers, nonempty=True)
    return max(values) - min(values)


def factorial_recursive(n: int) -> int:
    """Calculate the factorial of a number using recursion.

    :param n: The number.
    :return: The factorial of n.
    """
    n = _int(n, maximum=_MAX_RECURSION)
    if n < 0:
        raise ValueError("the factorial is undefined for negative numbers")
    return 1 if n <= 1 else n * factorial_recursive(n - 1)


def fibonacci_recursive(n: int) -> int:
    """Calculate the nth Fibonacci number using recursion.

    :param n: The position in the Fibonacci sequence.
    :return: The nth Fibonacci number.
    """
    n = _int(n, maximum=_MAX_SEQUENCE)
    if n < 0:
        raise ValueError("n must be at least 0")
    return _fibonacci(n)[0]


def catalan_number(n: int) -> int:
    """Calculate the nth Catalan number.

    :param n: The position in the Catalan sequence.
    :return: The nth Catalan number.
    """
    n = _int(n, maximum=_MAX_SEQUENCE)
    if n < 0:
        raise ValueError("n must be at least 0")
    return math.comb(2 * n, n) // (n + 1)


def is_palindrome(number: int) -> bool:
    """Check if a number is a palindrome.

    :param number: The number to check.
    :return: True if the number is a palindrome, False otherwise.
    """
    number = _int(number)
    return number >= 0 and str(number) == str(number)[::-1]


def sum_of_digits(number: int) -> int:
    """Calculate the sum of the digits of a number.

    :param number: The number.
    :return: The sum of its digits.
    """
    return sum(int(d) for d in str(abs(_int(number))))


def digital_root(number: int) -> int:
    """Calculate the digital root of a number, which is the iterative process of summing the digits of a number,
    until a single-digit number is reached.

    :param number: The number to find the digital root of.
    :return: The digital root.
    """
    number = abs(_int(number))
    while number >= 10:
        number = sum(int(d) for d in str(number))
    return number


def gcd_extended(a: int, b: int) -> tuple:
    """Extended Euclidean Algorithm. It returns the coefficients of Bezout's identity and the greatest common divisor.

    :param a: First number.
    :param b: Second number.
    :return: A tuple containing the coefficients of Bezout's identity and the gcd of a and b.
    """
    # Returns (x, y, g) with a*x + b*y == g == gcd(a, b): the coefficients first, as documented.
    old_r, r = _int(a), _int(b)
    old_x, x = 1, 0
    old_y, y = 0, 1
    while r:
        q = old_r // r
        old_r, r = r, old_r - q * r
        old_x, x = x, old_x - q * x
        old_y, y = y, old_y - q * y
    if old_r < 0:
        old_r, old_x, old_y = -old_r, -old_x, -old_y
    return (old_x, old_y, old_r)


def lcm_extended(a: int, b: int) -> int:
    """Calculate the Least Common Multiple (LCM) based on the GCD.

    :param a: First number.
    :param b: Second number.
    :return: The LCM of a and b.
    """
    a, b = _int(a), _int(b)
    if a == 0 or b == 0:
        return 0
    return abs(a * b) // gcd_extended(a, b)[2]


def sum_of_n_squares(n: int) -> int:
    """Calculate the sum of the squares of the first n natural numbers.

    :param n: The number of terms.
    :return: The sum of squares.
    """
    return sum_of_squares(n)


def sum_of_n_cubes(n: int) -> int:
    """Calculate the sum of the cubes of the first n natural numbers.

    :param n: The number of terms.
    :return: The sum of cubes.
    """
    return sum_of_cubes(n)


def pythagorean_triples(n: int) -> list:
    """Generate all Pythagorean triples up to a maximum value n.

    :param n: The maximum value of the hypotenuse.
    :return: A list of tuples representing the Pythagorean triples.
    """
    n = _int(n, maximum=_MAX_TRIPLES)
    triples: list[tuple[int, int, int]] = []
    for c in range(1, n + 1):
        for a in range(1, c):
            b_squared = c * c - a * a
            b = math.isqrt(b_squared)
            if b <= a:
                break
            if b * b == b_squared:
                triples.append((a, b, c))
    return sorted(triples)


def prime_sieve(n: int) -> list:
    """Sieve of Eratosthenes: Find all prime numbers up to n.

    :param n: The upper limit to find primes within.
    :return: A list of prime numbers up to n.
    """
    return _sieve(_int(n, maximum=_MAX_SIEVE))


def euler_totient_function(n: int) -> int:
    """Calculate Euler's Totient Function for a given n, which is the count of numbers less than n
    that are relatively prime to n.

    :param n: The input number.
    :return: The count of numbers less than n that are relatively prime to n.
    """
    n = _int(n, maximum=_MAX_FACTOR)
    if n < 1:
        raise ValueError("n must be at least 1")
    result = n
    for p in set(prime_factors(n)):
        result -= result // p
    return result


def greatest_difference(numbers: list[float]) -> float:
    """Find the greatest difference between any two numbers in a list.

    :param numbers: A list of numbers.
    :return: The greatest difference.
    """
    values = _nums(numbers, nonempty=True)
    return max(values) - min(values)


def sum_of_even_numbers(numbers: list[int]) -> int:
    """Calculate the sum of all even numbers in a list.

    :param numbers: A list of numbers.
    :return: The sum of all even numbers.
    """
    return sum(v for v in _ints(numbers) if v % 2 == 0)


def sum_of_odd_numbers(numbers: list[int]) -> int:
    """Calculate the sum of all odd numbers in a list.

    :param numbers: A list of numbers.
    :return: The sum of all odd numbers.
    """
    return sum(v for v in _ints(numbers) if v % 2 == 1)


def product_of_numbers(numbers: list[float]) -> float:
    """Calculate the product of all numbers in a list.

    :param numbers: A list of numbers.
    :return: The product of all numbers.
    """
    return math.prod(_nums(numbers))


def is_prime_number(n: int) -> bool:
    """Determine if a number is a prime number.

    :param n: The number to check.
    :return: True if n is a prime number, False otherwise.
    """
    return _is_prime(_int(n))


def primes_up_to_n(n: int) -> list:
    """Generate a list of prime numbers up to a given number n.

    :param n: The upper limit of the prime number search.
    :return: A list of prime numbers up to n.
    """
    return _sieve(_int(n, maximum=_MAX_SIEVE))


def number_of_divisors(n: int) -> int:
    """Calculate the number of divisors of a number.

    :param n: The number.
    :return: The number of divisors of n.
    """
    n = abs(_int(n, maximum=_MAX_FACTOR))
    if n == 0:
        raise ValueError("0 has infinitely many divisors")
    return len(_divisors(n))


def sum_of_divisors(n: int) -> int:
    """Calculate the sum of all divisors of a number, including itself.

    :param n: The number.
    :return: The sum of all divisors of n.
    """
    n = abs(_int(n, maximum=_MAX_FACTOR))
    if n == 0:
        raise ValueError("0 has infinitely many divisors")
    return _sum_of_divisors(n)


MATH_TOOLS: list[Callable[..., Any]] = [
    add,
    subtract,
    multiply,
    divide,
    modulus,
    power,
    sqrt,
    absolute,
    factorial,
    gcd,
    lcm,
    is_prime,
    fibonacci_sequence,
    prime_factors,
    cosine,
    sine,
    tangent,
    log,
    radians_to_degrees,
    degrees_to_radians,
    hypotenuse,
    area_circle,
    circumference_circle,
    area_rectangle,
    perimeter_rectangle,
    area_triangle,
    perimeter_triangle,
    quadratic_formula,
    perimeter_square,
    area_square,
    area_parallelogram,
    volume_cube,
    volume_sphere,
    volume_cylinder,
    surface_area_of_cylinder,
    volume_cone,
    surface_area_cube,
    surface_area_sphere,
    nth_root,
    sum_of_natural_numbers,
    sum_of_squares,
    sum_of_cubes,
    is_even,
    is_odd,
    sum_of_arithmetic_sequence,
    nth_term_arithmetic_sequence,
    sum_of_geometric_sequence,
    nth_term_geometric_sequence,
    compound_interest,
    simple_interest,
    convert_celsius_to_fahrenheit,
    convert_fahrenheit_to_celsius,
    area_of_rhombus,
    perimeter_of_hexagon,
    area_of_hexagon,
    area_of_ellipse,
    perimeter_of_ellipse,
    volume_of_prism,
    surface_area_of_prism,
    volume_of_pyramid,
    surface_area_of_pyramid,
    volume_of_torus,
    surface_area_of_torus,
    harmonic_mean,
    geometric_mean,
    euler_number_approximation,
    is_perfect_number,
    is_armstrong_number,
    nth_prime,
    pascals_triangle_row,
    binomial_coefficient,
    mean_absolute_deviation,
    standard_deviation,
    variance,
    coefficient_of_variation,
    median,
    mode,
    interquartile_range,
    range_of_numbers,
    factorial_recursive,
    fibonacci_recursive,
    catalan_number,
    is_palindrome,
    sum_of_digits,
    digital_root,
    gcd_extended,
    lcm_extended,
    sum_of_n_squares,
    sum_of_n_cubes,
    pythagorean_triples,
    prime_sieve,
    euler_totient_function,
    greatest_difference,
    sum_of_even_numbers,
    sum_of_odd_numbers,
    product_of_numbers,
    is_prime_number,
    primes_up_to_n,
    number_of_divisors,
    sum_of_divisors,
]

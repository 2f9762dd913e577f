#!/usr/bin/env python3
"""A line-based calculator for websocket_exec.

Each line the client sends is an arithmetic expression (numbers, + - * / //
% **, parentheses); each answer is one line: "= 42" or "error: ...". "quit"
ends the program with status 0, so the client sees close code 1000. Input is
parsed with the ast module and evaluated by hand, never with eval(), and
numbers are bounded, so no expression can run for long or fill the memory.

    websocket_exec -R /var/run/websocket -n calc -- python3 docs/examples/exec/calc.py
"""

import ast
import operator
import os
import sys

MAX_LINE = 200
MAX_BITS = 4096

BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def bounded(value):
    if isinstance(value, int) and value.bit_length() > MAX_BITS:
        raise ValueError("number too large")
    return value


def evaluate(node):
    if isinstance(node, ast.Expression):
        return evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return bounded(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in UNARY:
        return UNARY[type(node.op)](evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in BINARY:
        left, right = evaluate(node.left), evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            magnitude = max(abs(left), 2)
            if abs(right) * (magnitude.bit_length() if isinstance(magnitude, int) else 1024) > MAX_BITS:
                raise ValueError("number too large")
        return bounded(BINARY[type(node.op)](left, right))
    raise ValueError("only numbers, + - * / // % ** and parentheses")


def answer(line):
    if len(line) > MAX_LINE:
        return f"error: at most {MAX_LINE} characters"
    try:
        return f"= {evaluate(ast.parse(line, mode='eval'))}"
    except ZeroDivisionError:
        return "error: division by zero"
    except SyntaxError:
        return "error: not an expression"
    except (ValueError, OverflowError, RecursionError, MemoryError) as error:
        return f"error: {error}"


def main():
    who = os.environ.get("REMOTE_ADDR", "somebody")
    print(f"calculator ready for {who}: type an expression, or quit", flush=True)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        if line == "quit":
            print("bye", flush=True)
            return 0
        print(answer(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

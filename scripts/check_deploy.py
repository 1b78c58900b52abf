#!/usr/bin/env python3
"""Offline checks of the deployment files, run by scripts/check-deploy.sh.

Only the Python standard library and PyYAML (Debian: python3-yaml) are used, so the checks
run on a fresh Debian 12 without pip, helm or a Kubernetes cluster:

  schema      values.yaml and helm/events-processor/ci/*.yaml validate against
              values.schema.json (a JSON Schema draft-07 subset, implemented here; a keyword
              outside the subset is an error, so nothing is silently ignored)
  values      every .Values.x.y in the templates exists in values.yaml, and every value is
              used by a template and documented in the chart README
  config      the chart's `config` keys are exactly the variables of
              internal/config/config.cpp (minus secrets and HTTP_PORT), documented in
              docs/deployment.md; with an eventctl binary, the defaults match
              `eventctl config`
  render      renders the chart with each ci/*.yaml (a Go-template/Sprig subset that
              mimics Helm, float64 numbers included) and checks the manifests: kinds,
              names, selectors, probes, security context, grace period, hooks, references
  monitoring  metric and label names used by the alert rules and the dashboard exist in
              internal/observability/metrics.cpp; every alert has a runbook entry in
              docs/alerts.md and a promtool unit test; dashboard queries are written to a
              rules file for `promtool check rules` (PROMQL_OUT)
  compose     docker-compose.yml: bind-mounted files exist, services and dependencies

Usage: check_deploy.py [--root DIR] [--eventctl PATH] [--promql-out FILE] [CHECK...]
Exit status 1 when a check fails; every failure is printed.
"""
from __future__ import annotations

import argparse
import base64
import copy
import decimal
import fnmatch
import hashlib
import json
import os
import re
import subprocess
import sys
from typing import Any

import yaml

CHART = "helm/events-processor"


class CheckError(Exception):
    pass


class Report:
    def __init__(self) -> None:
        self.failures: list[str] = []

    def fail(self, check: str, message: str) -> None:
        self.failures.append(f"{check}: {message}")
        print(f"  FAIL {check}: {message}")

    def ok(self, check: str, message: str) -> None:
        print(f"  ok   {check}: {message}")


# ----------------------------------------------------------------------------------------
# JSON Schema (draft-07 subset)

SCHEMA_KEYWORDS = {
    "$schema", "$id", "title", "description", "default", "examples", "$comment",
    "type", "properties", "additionalProperties", "required", "enum", "const",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
    "pattern", "items", "minItems", "maxItems", "uniqueItems", "anyOf", "oneOf", "allOf", "not",
    "patternProperties", "propertyNames", "definitions", "$ref",
}


def json_type_matches(value: Any, t: str) -> bool:
    if t == "null":
        return value is None
    if t == "boolean":
        return isinstance(value, bool)
    if t == "integer":
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer())
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t == "string":
        return isinstance(value, str)
    if t == "array":
        return isinstance(value, list)
    if t == "object":
        return isinstance(value, dict)
    raise CheckError(f"unknown JSON Schema type {t!r}")


def schema_lint(schema: Any, path: str = "#") -> list[str]:
    """Keywords outside the implemented subset are errors, never silently ignored."""
    errors = []
    if isinstance(schema, bool):
        return errors
    if not isinstance(schema, dict):
        return [f"{path}: a schema must be an object or a boolean"]
    for key in schema:
        if key not in SCHEMA_KEYWORDS:
            errors.append(f"{path}: keyword {key!r} is not supported by this validator")
    for key in ("properties", "patternProperties", "definitions"):
        for name, sub in schema.get(key, {}).items():
            errors += schema_lint(sub, f"{path}/{key}/{name}")
    for key in ("additionalProperties", "items", "not", "propertyNames"):
        if key in schema and not isinstance(schema[key], bool):
            errors += schema_lint(schema[key], f"{path}/{key}")
    for key in ("anyOf", "oneOf", "allOf"):
        for n, sub in enumerate(schema.get(key, [])):
            errors += schema_lint(sub, f"{path}/{key}/{n}")
    return errors


def schema_validate(value: Any, schema: Any, root: Any, path: str = "") -> list[str]:
    where = path or "(root)"
    if schema is True or schema == {}:
        return []
    if schema is False:
        return [f"{where}: not allowed"]
    if "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/"):
            raise CheckError(f"only local $ref supported: {ref}")
        target = root
        for part in ref[2:].split("/"):
            target = target[part]
        return schema_validate(value, target, root, path)
    errors: list[str] = []
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(json_type_matches(value, t) for t in types):
            return [f"{where}: {json.dumps(value)} is not of type {'/'.join(types)}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {json.dumps(value)} is not one of {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: must be {json.dumps(schema['const'])}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: {value} is below the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{where}: {value} is above the maximum {schema['maximum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            errors.append(f"{where}: {value} must be above {schema['exclusiveMinimum']}")
        if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
            errors.append(f"{where}: {value} must be below {schema['exclusiveMaximum']}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{where}: shorter than {schema['minLength']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{where}: longer than {schema['maxLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{where}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{where}: more than {schema['maxItems']} items")
        if schema.get("uniqueItems"):
            seen = [json.dumps(v, sort_keys=True) for v in value]
            if len(seen) != len(set(seen)):
                errors.append(f"{where}: items are not unique")
        if "items" in schema:
            for n, item in enumerate(value):
                errors += schema_validate(item, schema["items"], root, f"{path}[{n}]")
    if isinstance(value, dict):
        for req in schema.get("required", []):
            if req not in value:
                errors.append(f"{where}: {req!r} is required")
        props = schema.get("properties", {})
        patterns = schema.get("patternProperties", {})
        for key, item in value.items():
            sub = f"{path}.{key}" if path else str(key)
            if "propertyNames" in schema:
                errors += schema_validate(key, schema["propertyNames"], root, sub)
            matched = False
            if key in props:
                matched = True
                errors += schema_validate(item, props[key], root, sub)
            for pattern, pschema in patterns.items():
                if re.search(pattern, key):
                    matched = True
                    errors += schema_validate(item, pschema, root, sub)
            if not matched and "additionalProperties" in schema:
                addl = schema["additionalProperties"]
                if addl is False:
                    errors.append(f"{where}: unknown key {key!r}")
                else:
                    errors += schema_validate(item, addl, root, sub)
    for sub in schema.get("allOf", []):
        errors += schema_validate(value, sub, root, path)
    if "anyOf" in schema and not any(
            not schema_validate(value, s, root, path) for s in schema["anyOf"]):
        errors.append(f"{where}: matches none of anyOf")
    if "oneOf" in schema:
        n = sum(1 for s in schema["oneOf"] if not schema_validate(value, s, root, path))
        if n != 1:
            errors.append(f"{where}: matches {n} of oneOf (needs exactly 1)")
    if "not" in schema and not schema_validate(value, schema["not"], root, path):
        errors.append(f"{where}: must not match the 'not' schema")
    return errors


# ----------------------------------------------------------------------------------------
# A Go text/template + Sprig subset that renders like Helm.

class TemplateError(Exception):
    pass


class Missing:
    """A nil interface value (Go), printed as "" by Helm."""


def go_float(v: float) -> str:
    """fmt's %v of a float64 (strconv 'g', shortest): %e when the exponent is < -4 or >= 6,
    so Helm prints a value of 1000000 as 1e+06."""
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "+Inf" if v > 0 else "-Inf"
    if v == 0:
        return "0"
    d = decimal.Decimal(repr(v)).normalize()
    sign, digits, exp = d.as_tuple()
    digs = "".join(map(str, digits))
    e10 = len(digs) + exp - 1
    s = "-" if sign else ""
    if e10 < -4 or e10 >= 6:
        mant = digs[0] + ("." + digs[1:] if len(digs) > 1 else "")
        return f"{s}{mant}e{'+' if e10 >= 0 else '-'}{abs(e10):02d}"
    return s + format(abs(d), "f")


def go_str(v: Any) -> str:
    if v is None or isinstance(v, Missing):
        return "<no value>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return go_float(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        return "[" + " ".join(go_str(x) for x in v) + "]"
    if isinstance(v, dict):
        return "map[" + " ".join(f"{k}:{go_str(v[k])}" for k in sorted(v)) + "]"
    return str(v)


def truthy(v: Any) -> bool:
    if v is None or isinstance(v, Missing):
        return False
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)):
        return v != 0
    if isinstance(v, (str, list, dict)):
        return len(v) > 0
    return True


def kind_of(v: Any) -> str:
    if v is None or isinstance(v, Missing):
        return "invalid"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, float):
        return "float64"
    if isinstance(v, int):
        return "int"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "slice"
    if isinstance(v, dict):
        return "map"
    return "func"


def to_plain(v: Any) -> Any:
    """Values as Helm's JSON round trip has them: whole floats print as integers."""
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e21:
        return int(v)
    if isinstance(v, dict):
        return {str(k): to_plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [to_plain(x) for x in v]
    if isinstance(v, Missing):
        return None
    return v


def to_float64(v: Any) -> Any:
    """Helm reads values through JSON: every number is a float64."""
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        return float(v)
    if isinstance(v, dict):
        return {k: to_float64(x) for k, x in v.items()}
    if isinstance(v, list):
        return [to_float64(x) for x in v]
    return v


class _Dumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> Any:
    if "\n" in data:
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_Dumper.add_representer(str, _str_presenter)


def to_yaml(v: Any) -> str:
    out = yaml.dump(to_plain(v), Dumper=_Dumper, default_flow_style=False, sort_keys=True,
                    allow_unicode=True, width=1 << 20)
    if out.endswith("...\n"):
        out = out[:-4]
    return out.rstrip("\n") if out.strip() != "" else "null"


def deep_merge(dst: dict, src: dict, overwrite: bool) -> dict:
    for k, v in src.items():
        if k in dst and isinstance(dst[k], dict) and isinstance(v, dict):
            deep_merge(dst[k], v, overwrite)
        elif k not in dst or overwrite:
            dst[k] = copy.deepcopy(v)
    return dst


def num(v: Any) -> float:
    if isinstance(v, bool) or v is None or isinstance(v, Missing):
        return 0
    if isinstance(v, (int, float)):
        return v
    try:
        return float(v)
    except ValueError:
        return 0


def go_printf(fmt: str, *args: Any) -> str:
    out = []
    i = 0
    n = 0
    while i < len(fmt):
        c = fmt[i]
        if c != "%":
            out.append(c)
            i += 1
            continue
        verb = fmt[i + 1]
        i += 2
        if verb == "%":
            out.append("%")
            continue
        arg = args[n] if n < len(args) else Missing()
        n += 1
        if verb in "sv":
            out.append(go_str(arg) if not isinstance(arg, Missing) else "%!" + verb + "(MISSING)")
        elif verb == "d":
            out.append(str(int(arg)) if isinstance(arg, (int, float)) else f"%!d({go_str(arg)})")
        elif verb == "q":
            out.append(json.dumps(go_str(arg)))
        else:
            raise TemplateError(f"printf verb %{verb} not supported")
    return "".join(out)


def go_eq(a: Any, b: Any) -> bool:
    ka, kb = kind_of(a), kind_of(b)
    numeric = {"int", "float64"}
    if ka in numeric and kb in numeric and ka != kb:
        raise TemplateError(f"incompatible types for comparison: {ka} and {kb}")
    if ka == "invalid" or kb == "invalid":
        return ka == kb
    return a == b


TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<str>"(?:[^"\\]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<num>-?\d+(?:\.\d+)?)
  | (?P<decl>:=)
  | (?P<assign>=)
  | (?P<pipe>\|)
  | (?P<lpar>\()
  | (?P<rpar>\))
  | (?P<comma>,)
  | (?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)
  | (?P<field>(?:\.[A-Za-z0-9_]+)+|\.)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
""", re.X)


def tokenize(src: str, where: str) -> list[tuple[str, str]]:
    tokens = []
    pos = 0
    while pos < len(src):
        m = TOKEN.match(src, pos)
        if not m:
            raise TemplateError(f"{where}: cannot parse {src[pos:pos + 20]!r}")
        kind = m.lastgroup
        text = m.group()
        pos = m.end()
        if kind == "ws":
            continue
        # A field right after ')' is a field of the parenthesised value.
        if kind == "field" and tokens and tokens[-1][0] == "rpar" and m.start() > 0 and \
                src[m.start() - 1] == ")":
            kind = "chain"
        tokens.append((kind, text))
    return tokens


class Node:
    def __init__(self, kind: str, **kw: Any) -> None:
        self.kind = kind
        self.__dict__.update(kw)


class Parser:
    """Parses one template file into nodes; {{ define }} blocks go to `defines`."""

    def __init__(self, text: str, name: str, defines: dict) -> None:
        self.name = name
        self.defines = defines
        self.items = self._lex(text)
        self.pos = 0

    def _lex(self, text: str) -> list:
        items = []
        pos = 0
        line = 1
        while True:
            start = text.find("{{", pos)
            if start < 0:
                items.append(("text", text[pos:], line))
                break
            chunk = text[pos:start]
            trim_left = text.startswith("{{- ", start) or text.startswith("{{-\n", start) or \
                text.startswith("{{-\t", start)
            if trim_left:
                chunk = chunk.rstrip(" \t\r\n")
            items.append(("text", chunk, line))
            line += text.count("\n", pos, start)
            inner_start = start + (3 if trim_left else 2)
            j = inner_start
            while j < len(text) and text[j] in " \t\r\n":
                j += 1
            if text.startswith("/*", j):
                cend = text.find("*/", j)
                if cend < 0:
                    raise TemplateError(f"{self.name}:{line}: unclosed comment")
                end = text.find("}}", cend)
                if end < 0 or text[cend + 2:end].strip() not in ("", "-"):
                    raise TemplateError(f"{self.name}:{line}: bad comment end")
                inner = ""
                trim_right = text[cend + 2:end].strip() == "-"
            else:
                end = text.find("}}", inner_start)
                if end < 0:
                    raise TemplateError(f"{self.name}:{line}: unclosed action")
                inner = text[inner_start:end]
                trim_right = inner.endswith(" -") or inner.endswith("\n-") or inner.endswith("\t-")
                if trim_right:
                    inner = inner[:-1]
            items.append(("action", inner.strip(), line))
            line += text.count("\n", start, end)
            pos = end + 2
            if trim_right:
                m = re.match(r"[ \t\r\n]*", text[pos:])
                line += m.group().count("\n")
                pos += m.end()
        return items

    def parse(self) -> list:
        nodes, stop = self._list(())
        if stop is not None:
            raise TemplateError(f"{self.name}: unexpected {{{{{stop}}}}}")
        return nodes

    def _list(self, stops: tuple) -> tuple[list, Any]:
        nodes = []
        while self.pos < len(self.items):
            kind, value, line = self.items[self.pos]
            self.pos += 1
            if kind == "text":
                if value:
                    nodes.append(Node("text", text=value))
                continue
            if value == "":
                continue  # comment
            where = f"{self.name}:{line}"
            word = value.split(None, 1)[0] if value.split() else ""
            rest = value[len(word):].strip()
            if word in stops:
                return nodes, (word, rest, where)
            if word in ("end", "else"):
                raise TemplateError(f"{where}: unexpected {{{{{value}}}}}")
            if word in ("if", "with", "range"):
                nodes.append(self._block(word, rest, where))
            elif word == "define":
                name = json.loads(rest)
                body, stop = self._list(("end",))
                if stop is None:
                    raise TemplateError(f"{where}: define {name} has no end")
                self.defines[name] = body
            elif word == "template":
                toks = tokenize(rest, where)
                name = json.loads(toks[0][1])
                pipe = self._pipeline(toks[1:], where) if len(toks) > 1 else None
                nodes.append(Node("template", name=name, pipe=pipe, where=where))
            elif word in ("block", "break", "continue"):
                raise TemplateError(f"{where}: {{{{{word}}}}} is not supported by this renderer")
            else:
                nodes.append(Node("action", pipe=self._pipeline(tokenize(value, where), where),
                                  where=where))
        return nodes, None

    def _block(self, word: str, rest: str, where: str) -> Node:
        toks = tokenize(rest, where)
        pipe = self._pipeline(toks, where)
        body, stop = self._list(("end", "else"))
        if stop is None:
            raise TemplateError(f"{where}: {{{{{word}}}}} has no end")
        else_body: list = []
        if stop[0] == "else":
            if stop[1]:  # else if / else with
                sub_word = stop[1].split(None, 1)[0]
                sub_rest = stop[1][len(sub_word):].strip()
                if sub_word not in ("if", "with"):
                    raise TemplateError(f"{stop[2]}: unsupported else {sub_word}")
                else_body = [self._block(sub_word, sub_rest, stop[2])]
                return Node(word, pipe=pipe, body=body, else_body=else_body, where=where)
            else_body, stop2 = self._list(("end",))
            if stop2 is None:
                raise TemplateError(f"{where}: {{{{{word}}}}} has no end")
        return Node(word, pipe=pipe, body=body, else_body=else_body, where=where)

    def _pipeline(self, toks: list, where: str) -> Node:
        decl_vars: list[str] = []
        decl_op = None
        # "$a := ..." / "$a, $b := ..." / "$a = ..."
        for i, (kind, text) in enumerate(toks):
            if kind in ("decl", "assign"):
                names = [t for k, t in toks[:i] if k != "comma"]
                if all(re.fullmatch(r"\$[A-Za-z0-9_]*", n) for n in names) and names:
                    decl_vars = names
                    decl_op = kind
                    toks = toks[i + 1:]
                break
            if kind not in ("var", "comma"):
                break
        cmds = []
        depth = 0
        groups: list[list] = [[]]
        for tok in toks:
            if tok[0] == "pipe" and depth == 0:
                groups.append([])
                continue
            if tok[0] == "lpar":
                depth += 1
            elif tok[0] == "rpar":
                depth -= 1
            groups[-1].append(tok)
        for group in groups:
            if not group:
                raise TemplateError(f"{where}: empty command in pipeline")
            cmds.append(self._command(group, where))
        return Node("pipeline", decl=decl_vars, op=decl_op, cmds=cmds, where=where)

    def _command(self, toks: list, where: str) -> list:
        args = []
        i = 0
        while i < len(toks):
            kind, text = toks[i]
            if kind == "lpar":
                depth = 1
                j = i + 1
                while depth:
                    if j >= len(toks):
                        raise TemplateError(f"{where}: unbalanced parenthesis")
                    if toks[j][0] == "lpar":
                        depth += 1
                    elif toks[j][0] == "rpar":
                        depth -= 1
                    j += 1
                sub = self._pipeline(toks[i + 1:j - 1], where)
                chain = None
                if j < len(toks) and toks[j][0] == "chain":
                    chain = toks[j][1][1:].split(".")
                    j += 1
                args.append(Node("sub", pipe=sub, chain=chain))
                i = j
                continue
            if kind == "str":
                args.append(Node("lit", value=json.loads(text)))
            elif kind == "raw":
                args.append(Node("lit", value=text[1:-1]))
            elif kind == "num":
                args.append(Node("lit", value=float(text) if "." in text else int(text)))
            elif kind == "field":
                args.append(Node("field", chain=[] if text == "." else text[1:].split(".")))
            elif kind == "var":
                parts = text.split(".")
                args.append(Node("var", name=parts[0], chain=parts[1:]))
            elif kind == "ident":
                if text in ("true", "false"):
                    args.append(Node("lit", value=text == "true"))
                elif text == "nil":
                    args.append(Node("lit", value=None))
                else:
                    args.append(Node("ident", name=text))
            else:
                raise TemplateError(f"{where}: unexpected {text!r}")
            i += 1
        return args


class FilesObj:
    def __init__(self, chart_dir: str, ignore: list[str]) -> None:
        self.chart_dir = chart_dir
        self.ignore = ignore

    def ignored(self, rel: str) -> bool:
        for pat in self.ignore:
            if pat.endswith("/"):
                if rel.startswith(pat) or fnmatch.fnmatch(rel + "/", pat + "*"):
                    return True
            elif fnmatch.fnmatch(rel, pat) or fnmatch.fnmatch(os.path.basename(rel), pat):
                return True
        return False

    def Get(self, rel: str) -> str:  # noqa: N802 (Helm's name)
        if self.ignored(rel):
            return ""
        path = os.path.join(self.chart_dir, rel)
        if not os.path.isfile(path):
            return ""
        with open(path, encoding="utf-8") as f:
            return f.read()


class Renderer:
    def __init__(self, chart_dir: str, values: dict, release: dict) -> None:
        self.chart_dir = chart_dir
        self.defines: dict[str, list] = {}
        self.files: dict[str, list] = {}
        with open(os.path.join(chart_dir, "Chart.yaml"), encoding="utf-8") as f:
            chart = yaml.safe_load(f)
        ignore = []
        helmignore = os.path.join(chart_dir, ".helmignore")
        if os.path.exists(helmignore):
            with open(helmignore, encoding="utf-8") as f:
                ignore = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
        self.root = {
            "Values": values,
            "Release": release,
            "Chart": {"Name": chart["name"], "Version": chart["version"],
                      "AppVersion": str(chart.get("appVersion", ""))},
            "Files": FilesObj(chart_dir, ignore),
            "Capabilities": {"KubeVersion": {"Version": "v1.29.0"}},
        }
        tdir = os.path.join(chart_dir, "templates")
        for name in sorted(os.listdir(tdir)):
            path = os.path.join(tdir, name)
            with open(path, encoding="utf-8") as f:
                text = f.read()
            tname = f"{os.path.basename(chart_dir)}/templates/{name}"
            nodes = Parser(text, tname, self.defines).parse()
            self.files[name] = nodes
            self.defines[tname] = nodes

    # -- evaluation
    def render_file(self, name: str) -> str:
        out: list[str] = []
        self._exec(self.files[name], self.root, [{"$": self.root}], out)
        return "".join(out).replace("<no value>", "")

    def _exec(self, nodes: list, dot: Any, scopes: list, out: list) -> None:
        for node in nodes:
            k = node.kind
            if k == "text":
                out.append(node.text)
            elif k == "action":
                value = self._pipe(node.pipe, dot, scopes)
                if not node.pipe.decl:
                    out.append(go_str(value))
            elif k == "if":
                inner = scopes + [{}]
                if truthy(self._pipe(node.pipe, dot, inner)):
                    self._exec(node.body, dot, inner, out)
                else:
                    self._exec(node.else_body, dot, inner, out)
            elif k == "with":
                inner = scopes + [{}]
                value = self._pipe(node.pipe, dot, inner)
                if truthy(value):
                    self._exec(node.body, value, inner, out)
                else:
                    self._exec(node.else_body, dot, inner, out)
            elif k == "range":
                self._range(node, dot, scopes, out)
            elif k == "template":
                data = self._pipe(node.pipe, dot, scopes) if node.pipe else None
                out.append(self.include(node.name, data))
            else:
                raise TemplateError(f"unknown node {k}")

    def _range(self, node: Node, dot: Any, scopes: list, out: list) -> None:
        pipe = node.pipe
        decl = pipe.decl
        value = self._pipe(Node("pipeline", decl=[], op=None, cmds=pipe.cmds, where=pipe.where),
                           dot, scopes)
        if value is None or isinstance(value, Missing):
            items: list = []
        elif isinstance(value, dict):
            items = [(k, value[k]) for k in sorted(value)]
        elif isinstance(value, list):
            items = list(enumerate(value))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            items = [(i, i) for i in range(int(value))]
        else:
            raise TemplateError(f"{node.where}: range can't iterate over {go_str(value)}")
        if not items:
            self._exec(node.else_body, dot, scopes + [{}], out)
            return
        for key, item in items:
            scope: dict = {}
            if len(decl) == 1:
                scope[decl[0]] = item
            elif len(decl) == 2:
                scope[decl[0]] = key
                scope[decl[1]] = item
            self._exec(node.body, item, scopes + [scope], out)

    def include(self, name: str, data: Any) -> str:
        if name not in self.defines:
            raise TemplateError(f"no template {name!r}")
        out: list[str] = []
        self._exec(self.defines[name], data, [{"$": self.root}], out)
        return "".join(out).replace("<no value>", "")

    def _lookup_var(self, name: str, scopes: list) -> Any:
        for scope in reversed(scopes):
            if name in scope:
                return scope[name]
        raise TemplateError(f"undefined variable {name}")

    def _pipe(self, pipe: Node, dot: Any, scopes: list) -> Any:
        value: Any = Missing()
        has_value = False
        for cmd in pipe.cmds:
            value = self._cmd(cmd, dot, scopes, value if has_value else None, has_value,
                              pipe.where)
            has_value = True
        if pipe.decl:
            if pipe.op == "decl":
                for name in pipe.decl:
                    scopes[-1][name] = value
            else:
                for name in pipe.decl:
                    for scope in reversed(scopes):
                        if name in scope:
                            scope[name] = value
                            break
                    else:
                        raise TemplateError(f"{pipe.where}: undefined variable {name}")
        return value

    def _field(self, base: Any, chain: list, where: str, args: list | None = None) -> Any:
        value = base
        for n, name in enumerate(chain):
            if isinstance(value, dict):
                value = value.get(name, Missing())
            elif isinstance(value, FilesObj) and name == "Get":
                if args is None or n != len(chain) - 1:
                    raise TemplateError(f"{where}: .Files.Get needs an argument")
                return value.Get(*args)
            elif value is None or isinstance(value, Missing):
                raise TemplateError(
                    f"{where}: nil pointer evaluating interface {{}}.{name} "
                    f"(.{'.'.join(chain[:n + 1])})")
            else:
                raise TemplateError(f"{where}: can't evaluate field {name} in {kind_of(value)}")
        if args:
            raise TemplateError(f"{where}: {'.'.join(chain)} is not a method but has arguments")
        return value

    def _arg(self, node: Node, dot: Any, scopes: list, where: str) -> Any:
        if node.kind == "lit":
            return node.value
        if node.kind == "field":
            return self._field(dot, node.chain, where)
        if node.kind == "var":
            return self._field(self._lookup_var(node.name, scopes), node.chain, where)
        if node.kind == "sub":
            value = self._pipe(node.pipe, dot, scopes)
            return self._field(value, node.chain, where) if node.chain else value
        if node.kind == "ident":
            return self._call(node.name, [], dot, scopes, where)
        raise TemplateError(f"{where}: bad argument")

    def _cmd(self, cmd: list, dot: Any, scopes: list, piped: Any, has_piped: bool,
             where: str) -> Any:
        first = cmd[0]
        if first.kind == "ident":
            if first.name in ("and", "or"):
                arg_nodes = cmd[1:]
                values = []
                for a in arg_nodes:
                    v = self._arg(a, dot, scopes, where)
                    values.append(v)
                    if first.name == "and" and not truthy(v):
                        return v
                    if first.name == "or" and truthy(v):
                        return v
                if has_piped:
                    return piped
                return values[-1]
            args = [self._arg(a, dot, scopes, where) for a in cmd[1:]]
            if has_piped:
                args.append(piped)
            return self._call(first.name, args, dot, scopes, where)
        if first.kind == "field" and (len(cmd) > 1 or has_piped) and \
                first.chain[-1:] == ["Get"]:
            args = [self._arg(a, dot, scopes, where) for a in cmd[1:]]
            if has_piped:
                args.append(piped)
            return self._field(dot, first.chain, where, args)
        if len(cmd) > 1 or has_piped:
            raise TemplateError(f"{where}: can't give argument to non-function")
        return self._arg(first, dot, scopes, where)

    def _call(self, name: str, a: list, dot: Any, scopes: list, where: str) -> Any:
        def need(n: int) -> None:
            if len(a) != n:
                raise TemplateError(f"{where}: {name} wants {n} arguments, got {len(a)}")

        if name == "include":
            need(2)
            return self.include(a[0], a[1])
        if name == "required":
            need(2)
            if a[1] is None or isinstance(a[1], Missing) or a[1] == "":
                raise TemplateError(f"{where}: execution error: {a[0]}")
            return a[1]
        if name == "fail":
            raise TemplateError(f"{where}: execution error: {a[0]}")
        if name == "toYaml":
            need(1)
            return to_yaml(a[0])
        if name == "toJson":
            need(1)
            return json.dumps(to_plain(a[0]), separators=(",", ":"), sort_keys=True)
        if name == "fromYaml":
            need(1)
            try:
                loaded = yaml.safe_load(a[0]) or {}
            except yaml.YAMLError as e:
                return {"Error": str(e)}
            return to_float64(loaded)
        if name in ("nindent", "indent"):
            need(2)
            pad = " " * int(a[0])
            text = pad + go_str(a[1]).replace("\n", "\n" + pad)
            return "\n" + text if name == "nindent" else text
        if name == "quote":
            return " ".join(json.dumps(go_str(x)) for x in a if not (
                x is None or isinstance(x, Missing)))
        if name == "squote":
            return " ".join("'" + go_str(x) + "'" for x in a if x is not None)
        if name == "default":
            need(2)
            return a[1] if truthy(a[1]) else a[0]
        if name == "empty":
            need(1)
            return not truthy(a[0])
        if name == "coalesce":
            for x in a:
                if truthy(x):
                    return x
            return None
        if name == "trunc":
            need(2)
            s = go_str(a[1])
            n = int(a[0])
            return s[:n] if n >= 0 else s[n:]
        if name == "trimSuffix":
            need(2)
            s = go_str(a[1])
            return s[: -len(a[0])] if a[0] and s.endswith(a[0]) else s
        if name == "trimPrefix":
            need(2)
            s = go_str(a[1])
            return s[len(a[0]):] if s.startswith(a[0]) else s
        if name == "trim":
            need(1)
            return go_str(a[0]).strip()
        if name == "contains":
            need(2)
            return go_str(a[0]) in go_str(a[1])
        if name == "hasPrefix":
            need(2)
            return go_str(a[1]).startswith(go_str(a[0]))
        if name == "replace":
            need(3)
            return go_str(a[2]).replace(a[0], a[1])
        if name == "lower":
            return go_str(a[0]).lower()
        if name == "upper":
            return go_str(a[0]).upper()
        if name == "printf":
            return go_printf(a[0], *a[1:])
        if name == "print":
            out = ""
            for n, x in enumerate(a):
                if n and not isinstance(x, str) and not isinstance(a[n - 1], str):
                    out += " "
                out += go_str(x)
            return out
        if name == "eq":
            return any(go_eq(a[0], b) for b in a[1:])
        if name == "ne":
            need(2)
            return not go_eq(a[0], a[1])
        if name in ("lt", "le", "gt", "ge"):
            need(2)
            go_eq(a[0], a[0])
            if kind_of(a[0]) != kind_of(a[1]):
                raise TemplateError(f"{where}: incompatible types for comparison")
            return {"lt": a[0] < a[1], "le": a[0] <= a[1], "gt": a[0] > a[1],
                    "ge": a[0] >= a[1]}[name]
        if name == "not":
            need(1)
            return not truthy(a[0])
        if name == "kindIs":
            need(2)
            return kind_of(a[1]) == a[0]
        if name == "kindOf":
            return kind_of(a[0])
        if name in ("int", "int64"):
            need(1)
            return int(num(a[0]))
        if name == "float64":
            return float(num(a[0]))
        if name == "toString":
            need(1)
            return go_str(a[0]) if not (a[0] is None or isinstance(a[0], Missing)) else ""
        if name == "dict":
            if len(a) % 2:
                raise TemplateError(f"{where}: dict needs key/value pairs")
            return {go_str(a[i]): a[i + 1] for i in range(0, len(a), 2)}
        if name == "list":
            return list(a)
        if name == "set":
            need(3)
            a[0][a[1]] = a[2]
            return a[0]
        if name == "unset":
            a[0].pop(a[1], None)
            return a[0]
        if name == "hasKey":
            need(2)
            return a[1] in a[0]
        if name == "get":
            need(2)
            return a[0].get(a[1], "")
        if name == "keys":
            return sorted(k for d in a for k in d)
        if name in ("merge", "mergeOverwrite"):
            dst = a[0]
            for src in a[1:]:
                if src is None or isinstance(src, Missing):
                    continue
                deep_merge(dst, src, name == "mergeOverwrite")
            return dst
        if name == "omit":
            return {k: v for k, v in a[0].items() if k not in a[1:]}
        if name == "pick":
            return {k: v for k, v in a[0].items() if k in a[1:]}
        if name == "append":
            need(2)
            return list(a[0] or []) + [a[1]]
        if name == "has":
            need(2)
            return a[0] in (a[1] or [])
        if name == "join":
            need(2)
            return a[0].join(go_str(x) for x in (a[1] or []))
        if name == "sha256sum":
            need(1)
            return hashlib.sha256(go_str(a[0]).encode()).hexdigest()
        if name == "b64enc":
            need(1)
            return base64.b64encode(go_str(a[0]).encode()).decode()
        if name == "deepCopy":
            return copy.deepcopy(a[0])
        raise TemplateError(f"{where}: function {name!r} is not supported by this renderer")


def load_values(chart_dir: str, overrides: list[str]) -> dict:
    with open(os.path.join(chart_dir, "values.yaml"), encoding="utf-8") as f:
        values = yaml.safe_load(f) or {}
    for path in overrides:
        with open(path, encoding="utf-8") as f:
            coalesce(values, yaml.safe_load(f) or {})
    return values


def coalesce(dst: dict, src: dict) -> None:
    """Helm's merge of user values over chart values: null deletes a key."""
    for k, v in src.items():
        if v is None:
            dst.pop(k, None)
        elif isinstance(v, dict) and isinstance(dst.get(k), dict):
            coalesce(dst[k], v)
        else:
            dst[k] = copy.deepcopy(v)


def strip_nulls(values: Any) -> Any:
    """Helm drops null chart defaults too (so they never reach the templates or schema)."""
    if isinstance(values, dict):
        return {k: strip_nulls(v) for k, v in values.items() if v is not None}
    return values


# ----------------------------------------------------------------------------------------
# Checks

def flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves of the values tree: scalars, lists and empty maps."""
    out: dict[str, Any] = {}
    if isinstance(values, dict) and values:
        for k, v in values.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else k))
    else:
        out[prefix] = values
    return out


def template_texts(chart_dir: str) -> dict[str, str]:
    tdir = os.path.join(chart_dir, "templates")
    out = {}
    for name in sorted(os.listdir(tdir)):
        with open(os.path.join(tdir, name), encoding="utf-8") as f:
            out[name] = f.read()
    return out


VALUES_REF = re.compile(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")


def check_schema(root: str, rep: Report) -> None:
    chart = os.path.join(root, CHART)
    with open(os.path.join(chart, "values.schema.json"), encoding="utf-8") as f:
        schema = json.load(f)
    lint = schema_lint(schema)
    for e in lint:
        rep.fail("schema", e)
    if schema.get("$schema") != "http://json-schema.org/draft-07/schema#":
        rep.fail("schema", "values.schema.json must declare JSON Schema draft-07")

    def descriptions(s: dict, path: str) -> None:
        for name, sub in s.get("properties", {}).items():
            if not sub.get("description"):
                rep.fail("schema", f"{path}{name}: no description")
            descriptions(sub, f"{path}{name}.")

    descriptions(schema, "")
    sets = [[]] + [[p] for p in ci_values(chart)]
    for overrides in sets:
        # Helm keeps null chart defaults (as nil) unless a user value replaces them; the
        # schema must accept both forms.
        values = load_values(chart, overrides)
        errors = schema_validate(values, schema, schema)
        errors += schema_validate(strip_nulls(values), schema, schema)
        label = "values.yaml" + "".join(" + " + os.path.relpath(p, chart) for p in overrides)
        if errors:
            for e in errors:
                rep.fail("schema", f"{label}: {e}")
        else:
            rep.ok("schema", f"{label} validates against values.schema.json")
    # The schema must reject what it is meant to reject.
    values = strip_nulls(load_values(chart, []))
    bad_cases = {
        "unknown top-level key": lambda v: v.update(nonsense=1),
        "unknown config key": lambda v: v["config"].update(BATCHSIZE=5),
        "BATCH_SIZE above 10000": lambda v: v["config"].update(BATCH_SIZE=20000),
        "bad duration": lambda v: v["config"].update(ACK_WAIT="5 seconds"),
        "bad tenant id": lambda v: v["config"].update(TENANTS="acme,9lives"),
        "bad log level": lambda v: v["config"].update(LOG_LEVEL="verbose"),
        "string replicas": lambda v: v["processor"].update(replicaCount="two"),
        "NATS credentials in the ConfigMap": lambda v: v["config"].update(
            NATS_URL="nats://app:s3cret@nats:4222"),
        "a bad PDB eviction policy": lambda v: v["processor"]["podDisruptionBudget"].update(
            unhealthyPodEvictionPolicy="Always"),
    }
    for label, mutate in bad_cases.items():
        bad = copy.deepcopy(values)
        mutate(bad)
        if not schema_validate(bad, schema, schema):
            rep.fail("schema", f"the schema accepts a value with {label}")
    rep.ok("schema", f"the schema rejects {len(bad_cases)} kinds of invalid values")


def ci_values(chart: str) -> list[str]:
    cdir = os.path.join(chart, "ci")
    if not os.path.isdir(cdir):
        return []
    return [os.path.join(cdir, n) for n in sorted(os.listdir(cdir)) if n.endswith(".yaml")]


def check_values(root: str, rep: Report) -> None:
    chart = os.path.join(root, CHART)
    values = load_values(chart, [])
    texts = template_texts(chart)
    refs: set[str] = set()
    for name, text in texts.items():
        for m in VALUES_REF.finditer(text):
            path = m.group(1)[1:]
            refs.add(path)
            node: Any = values
            walked = []
            for part in path.split("."):
                walked.append(part)
                if not isinstance(node, dict) or part not in node:
                    rep.fail("values", f"templates/{name}: .Values.{path} does not exist in "
                                       f"values.yaml (missing at {'.'.join(walked)})")
                    break
                node = node[part]
    rep.ok("values", f"{len(refs)} distinct .Values references checked against values.yaml")
    leaves = flatten(values)
    unused = []
    for leaf in leaves:
        # A leaf is used when a template references it or one of its parents.
        parts = leaf.split(".")
        if not any(".".join(parts[:n]) in refs for n in range(1, len(parts) + 1)):
            unused.append(leaf)
    for leaf in unused:
        rep.fail("values", f"{leaf} is set in values.yaml but no template uses it")
    readme_path = os.path.join(chart, "README.md")
    with open(readme_path, encoding="utf-8") as f:
        readme = f.read()
    documented = set(re.findall(r"^\|\s*`([^`]+)`\s*\|", readme, re.M))
    for leaf in leaves:
        if leaf not in documented:
            rep.fail("values", f"{leaf} is not listed in {CHART}/README.md")
    for doc in sorted(documented - set(leaves)):
        rep.fail("values", f"README.md lists {doc}, which is not in values.yaml")
    if not unused:
        rep.ok("values", f"all {len(leaves)} values are used by templates")
    rep.ok("values", "README.md values table checked against values.yaml")


CONFIG_KEY = re.compile(
    r'(?:StringKey|IntKey|DurationKey|name_key|dur_key|Key k\{|Key k = IntKey)\(?\s*"([A-Z][A-Z0-9_]+)"')
SECRET_KEYS = {"POSTGRES_DSN", "NATS_USER", "NATS_PASSWORD", "NATS_TOKEN"}
# Chart defaults that deliberately differ from the binary's (a local-run default).
CHART_DEFAULT_DIFFS = {"NATS_URL"}
CHART_SET_KEYS = {"HTTP_PORT", "NATS_CREDS_FILE"}


def parse_duration_ms(text: str) -> int | None:
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", text)
    if not m:
        return None
    return int(m.group(1)) * {"ms": 1, "s": 1000, "m": 60000, "h": 3600000}[m.group(2)]


def check_config(root: str, rep: Report, eventctl: str | None) -> None:
    with open(os.path.join(root, "internal/config/config.cpp"), encoding="utf-8") as f:
        cpp = f.read()
    keys = list(dict.fromkeys(CONFIG_KEY.findall(cpp)))
    if len(keys) < 20:
        rep.fail("config", f"found only {len(keys)} keys in config.cpp; did its layout change?")
        return
    values = load_values(os.path.join(root, CHART), [])
    chart_keys = set(values.get("config", {}))
    expected = set(keys) - SECRET_KEYS - CHART_SET_KEYS
    for k in sorted(expected - chart_keys):
        rep.fail("config", f"{k} (config.cpp) is missing from values.yaml `config`")
    for k in sorted(chart_keys - set(keys)):
        rep.fail("config", f"values.yaml config.{k} is not read by the binaries (config.cpp)")
    with open(os.path.join(root, CHART, "values.schema.json"), encoding="utf-8") as f:
        schema = json.load(f)
    schema_keys = set(schema["properties"]["config"]["properties"])
    if schema_keys != chart_keys:
        rep.fail("config", f"schema config keys differ from values.yaml: "
                           f"{sorted(schema_keys ^ chart_keys)}")
    with open(os.path.join(root, "docs/deployment.md"), encoding="utf-8") as f:
        deployment_md = f.read()
    for k in keys:
        if f"`{k}`" not in deployment_md:
            rep.fail("config", f"{k} is not documented in docs/deployment.md")
    rep.ok("config", f"{len(keys)} variables of config.cpp checked against values.yaml, "
                     f"values.schema.json and docs/deployment.md")
    if not eventctl:
        rep.ok("config", "no eventctl binary given: default values not compared (skipped)")
        return
    env = {"PATH": "/usr/bin:/bin"}
    try:
        out = subprocess.run([eventctl, "config"], env=env, capture_output=True, text=True,
                             timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        rep.fail("config", f"{eventctl} config failed: {e}")
        return
    defaults = {}
    for line in out.splitlines():
        m = re.match(r"([A-Z0-9_]+)=(.*?)  # ", line)
        if m:
            defaults[m.group(1)] = m.group(2)
    compared = 0
    for k, v in values["config"].items():
        if v is None or v == "" or k not in defaults or k in CHART_DEFAULT_DIFFS:
            continue
        if k == "MAX_ACK_PENDING" and v == 0:
            continue  # printed as the computed 4 x BATCH_SIZE
        want = defaults[k]
        got = str(v)
        same = got == want or (parse_duration_ms(got) is not None and
                               parse_duration_ms(got) == parse_duration_ms(want))
        if not same:
            rep.fail("config", f"values.yaml config.{k}={got} but the binary's default is {want}")
        compared += 1
    if compared:
        rep.ok("config", f"{compared} defaults in values.yaml match `eventctl config`")


def duration_seconds(text: str) -> float:
    ms = parse_duration_ms(str(text))
    if ms is None:
        raise CheckError(f"bad duration {text!r}")
    return ms / 1000


def render_chart(chart: str, overrides: list[str], release: str = "evp",
                 namespace: str = "events") -> tuple[list[dict], str, dict]:
    values = to_float64(load_values(chart, overrides))
    r = Renderer(chart, values, {"Name": release, "Namespace": namespace, "Service": "Helm",
                                 "IsInstall": True, "IsUpgrade": False, "Revision": 1})
    docs = []
    notes = ""
    for name in r.files:
        if name.startswith("_"):
            continue
        text = r.render_file(name)
        if name == "NOTES.txt":
            notes = text
            continue
        try:
            for doc in yaml.safe_load_all(text):
                if doc:
                    doc.setdefault("__file__", name)
                    docs.append(doc)
        except yaml.YAMLError as e:
            raise CheckError(f"templates/{name} renders invalid YAML: {e}\n--- rendered ---\n"
                             + "\n".join(f"{n + 1:4} {ln}" for n, ln in
                                         enumerate(text.splitlines())))
    return docs, notes, to_plain(values)


DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
API_VERSIONS = {
    "ConfigMap": "v1", "Secret": "v1", "Service": "v1", "ServiceAccount": "v1",
    "Deployment": "apps/v1", "Job": "batch/v1", "PodDisruptionBudget": "policy/v1",
    "HorizontalPodAutoscaler": "autoscaling/v2", "ServiceMonitor": "monitoring.coreos.com/v1",
    "PrometheusRule": "monitoring.coreos.com/v1",
}


def check_manifests(label: str, docs: list[dict], values: dict, root: str,
                    rep: Report) -> None:
    def fail(msg: str) -> None:
        rep.fail("render", f"{label}: {msg}")

    by_kind: dict[str, dict[str, dict]] = {}
    for doc in docs:
        kind = doc.get("kind")
        name = doc.get("metadata", {}).get("name", "")
        src = doc.pop("__file__", "?")
        if kind not in API_VERSIONS:
            fail(f"{src}: unexpected kind {kind}")
            continue
        if doc.get("apiVersion") != API_VERSIONS[kind]:
            fail(f"{src}: {kind} apiVersion {doc.get('apiVersion')} != {API_VERSIONS[kind]}")
        if not name or len(name) > 63 or not DNS1123.match(name):
            fail(f"{src}: {kind} name {name!r} is not a valid DNS-1123 name of <= 63 chars")
        if name in by_kind.setdefault(kind, {}):
            fail(f"{src}: duplicate {kind} {name}")
        by_kind[kind][name] = doc
        for key, val in (doc["metadata"].get("labels") or {}).items():
            if not isinstance(val, str) or len(val) > 63 or not LABEL_VALUE.match(val):
                fail(f"{kind}/{name}: label {key}={val!r} is not a valid label value")
        if "namespace" in doc["metadata"]:
            fail(f"{kind}/{name}: sets metadata.namespace (Helm sets it)")
    cfg = values["config"]
    grace = duration_seconds(cfg.get("SHUTDOWN_GRACE") or "20s")
    configmaps = by_kind.get("ConfigMap", {})
    secrets = set(by_kind.get("Secret", {}))
    existing = values["secret"].get("existingSecret") or ""
    if existing:
        secrets.add(existing)
    secrets.add(values["natsCreds"].get("secretName") or "")
    for cm_name, cm in configmaps.items():
        for k, v in (cm.get("data") or {}).items():
            if not isinstance(v, str):
                fail(f"ConfigMap {cm_name}: {k} is not a string ({v!r})")
            if k.endswith(".json"):
                try:
                    json.loads(v)
                except ValueError as e:
                    fail(f"ConfigMap {cm_name}: {k} is not valid JSON: {e}")
            elif re.fullmatch(r"[A-Z][A-Z0-9_]*", k) and re.search(r"e\+\d\d$", str(v)):
                fail(f"ConfigMap {cm_name}: {k}={v} is printed in float notation")
    deployments = by_kind.get("Deployment", {})
    if not deployments:
        fail("no Deployment rendered")
    pod_labels: dict[str, dict] = {}
    for name, dep in deployments.items():
        spec = dep["spec"]
        sel = spec["selector"]["matchLabels"]
        tmpl = spec["template"]
        labels = tmpl["metadata"]["labels"]
        pod_labels[name] = labels
        if any(labels.get(k) != v for k, v in sel.items()):
            fail(f"Deployment {name}: selector {sel} does not match the pod labels")
        pod = tmpl["spec"]
        psc = pod.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True:
            fail(f"Deployment {name}: pod securityContext.runAsNonRoot is not true")
        if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            fail(f"Deployment {name}: pod seccompProfile is not RuntimeDefault")
        tgp = pod.get("terminationGracePeriodSeconds")
        # The binaries exit 1 at SHUTDOWN_GRACE + 2 s after SIGTERM (core/signals.cpp).
        if not isinstance(tgp, int) or tgp <= grace + 2:
            fail(f"Deployment {name}: terminationGracePeriodSeconds {tgp} must exceed "
                 f"SHUTDOWN_GRACE + 2 s ({grace + 2:g}s)")
        volumes = {v["name"] for v in pod.get("volumes", [])}
        for c in pod["containers"]:
            csc = c.get("securityContext", {})
            want = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                    "runAsNonRoot": True}
            for k, v in want.items():
                if csc.get(k) is not v:
                    fail(f"Deployment {name}: container {c['name']} securityContext.{k} "
                         f"is not {str(v).lower()}")
            if "ALL" not in (csc.get("capabilities", {}).get("drop") or []):
                fail(f"Deployment {name}: container {c['name']} does not drop ALL capabilities")
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            if "HTTP_PORT" not in env or str(ports.get("http")) != env["HTTP_PORT"]:
                fail(f"Deployment {name}: HTTP_PORT {env.get('HTTP_PORT')} != port http "
                     f"{ports.get('http')}")
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"),
                                ("startupProbe", "/healthz")):
                p = c.get(probe)
                if not p or p.get("httpGet", {}).get("path") != path or \
                        p["httpGet"].get("port") not in ports:
                    fail(f"Deployment {name}: {probe} must GET {path} on a named port")
                elif probe != "readinessProbe" and p.get("successThreshold", 1) != 1:
                    fail(f"Deployment {name}: {probe}.successThreshold must be 1")
            for src in c.get("envFrom", []):
                if "configMapRef" in src and src["configMapRef"]["name"] not in configmaps:
                    fail(f"Deployment {name}: envFrom ConfigMap "
                         f"{src['configMapRef']['name']} is not rendered")
                if "secretRef" in src and src["secretRef"]["name"] not in secrets:
                    fail(f"Deployment {name}: envFrom Secret {src['secretRef']['name']} "
                         f"is neither rendered nor secret.existingSecret")
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes:
                    fail(f"Deployment {name}: volumeMount {m['name']} has no volume")
            if not c.get("resources", {}).get("requests"):
                fail(f"Deployment {name}: container {c['name']} has no resource requests")
        sa = pod.get("serviceAccountName")
        if sa and sa != "default" and sa not in by_kind.get("ServiceAccount", {}) and \
                values["serviceAccount"]["create"]:
            fail(f"Deployment {name}: ServiceAccount {sa} is not rendered")
        for tsc in pod.get("topologySpreadConstraints", []):
            ml = tsc.get("labelSelector", {}).get("matchLabels", {})
            if any(labels.get(k) != v for k, v in ml.items()) or not ml:
                fail(f"Deployment {name}: topologySpreadConstraint does not select its pods")

    def selects(selector: dict, what: str) -> None:
        matched = [n for n, lab in pod_labels.items()
                   if all(lab.get(k) == v for k, v in selector.items())]
        if len(matched) != 1:
            fail(f"{what}: selector {selector} matches {len(matched)} Deployments (want 1)")

    for name, svc in by_kind.get("Service", {}).items():
        selects(svc["spec"]["selector"], f"Service {name}")
        for p in svc["spec"]["ports"]:
            if p.get("targetPort") != "http":
                fail(f"Service {name}: targetPort must be the named port http")
    for name, pdb in by_kind.get("PodDisruptionBudget", {}).items():
        selects(pdb["spec"]["selector"]["matchLabels"], f"PodDisruptionBudget {name}")
        if ("minAvailable" in pdb["spec"]) == ("maxUnavailable" in pdb["spec"]):
            fail(f"PodDisruptionBudget {name}: set exactly one of minAvailable, maxUnavailable")
    for name, hpa in by_kind.get("HorizontalPodAutoscaler", {}).items():
        target = hpa["spec"]["scaleTargetRef"]["name"]
        if target not in deployments:
            fail(f"HorizontalPodAutoscaler {name}: target {target} is not rendered")
        elif "replicas" in deployments[target]["spec"]:
            fail(f"Deployment {target}: sets replicas although an HPA scales it")
        if hpa["spec"]["minReplicas"] > hpa["spec"]["maxReplicas"]:
            fail(f"HorizontalPodAutoscaler {name}: minReplicas > maxReplicas")
    for name, job in by_kind.get("Job", {}).items():
        ann = job["metadata"].get("annotations", {})
        if ann.get("helm.sh/hook") != "pre-install,pre-upgrade":
            fail(f"Job {name}: not a pre-install,pre-upgrade hook")
        c = job["spec"]["template"]["spec"]["containers"][0]
        if c.get("command", [])[:2] != ["eventctl", "migrate"]:
            fail(f"Job {name}: does not run eventctl migrate")
        if c.get("envFrom"):
            fail(f"Job {name}: envFrom refers to release resources that a pre-install hook "
                 f"cannot rely on")
        for e in c.get("env", []):
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                hook_secret = by_kind.get("Secret", {}).get(ref["name"])
                if ref["name"] != existing and (
                        not hook_secret or "helm.sh/hook" not in
                        hook_secret["metadata"].get("annotations", {})):
                    fail(f"Job {name}: Secret {ref['name']} is not a hook resource created "
                         f"before the Job (nor secret.existingSecret)")
                elif hook_secret and int(hook_secret["metadata"]["annotations"].get(
                        "helm.sh/hook-weight", "0")) >= int(ann.get("helm.sh/hook-weight", "0")):
                    fail(f"Job {name}: its Secret's hook weight must be lower than the Job's")
        sa = job["spec"]["template"]["spec"].get("serviceAccountName")
        if sa and sa in by_kind.get("ServiceAccount", {}):
            fail(f"Job {name}: uses ServiceAccount {sa}, which does not exist yet at "
                 f"pre-install")
    for name, sm in by_kind.get("ServiceMonitor", {}).items():
        matched = [s for s in by_kind.get("Service", {}).values()
                   if all(s["metadata"]["labels"].get(k) == v
                          for k, v in sm["spec"]["selector"].get("matchLabels", {}).items())]
        if len(matched) != len(by_kind.get("Service", {})):
            fail(f"ServiceMonitor {name}: does not select every Service")
        jobs = {s["metadata"]["labels"].get(sm["spec"].get("jobLabel", "")) for s in matched}
        if not jobs <= {"events-processor", "dlq-worker"}:
            fail(f"ServiceMonitor {name}: job names {jobs} differ from the alert rules'")
    for name, pr in by_kind.get("PrometheusRule", {}).items():
        with open(os.path.join(root, CHART, "files/prometheus-rules.yaml"),
                  encoding="utf-8") as f:
            source = yaml.safe_load(f)
        disabled = set(values["prometheusRule"].get("disabledAlerts") or [])
        # EvpMetricsAbsent needs the chart's ServiceMonitor (the job name it gives).
        if not values["serviceMonitor"].get("enabled"):
            disabled.add("EvpMetricsAbsent")
        want = [r["alert"] for g in source["groups"] for r in g["rules"]
                if r.get("alert") not in disabled]
        got = [r["alert"] for g in pr["spec"]["groups"] for r in g["rules"]]
        if sorted(want) != sorted(got):
            fail(f"PrometheusRule {name}: alerts {got} != {want}")
        extra = values["prometheusRule"].get("ruleLabels") or {}
        base = values["prometheusRule"].get("runbookBaseUrl") or ""
        for g in pr["spec"]["groups"]:
            for r in g["rules"]:
                link = r.get("annotations", {}).get("runbook_url")
                if base and link != f"{base}#{r['alert'].lower()}":
                    fail(f"PrometheusRule {name}: {r['alert']} runbook_url {link!r}")
                if not base and link is not None:
                    fail(f"PrometheusRule {name}: {r['alert']} has a runbook_url without a base")
                if r["alert"] == "EvpMetricsAbsent" and 'namespace="' not in r["expr"]:
                    fail(f"PrometheusRule {name}: EvpMetricsAbsent ignores the namespace")

                if any(r.get("labels", {}).get(k) != v for k, v in extra.items()):
                    fail(f"PrometheusRule {name}: {r['alert']} lacks ruleLabels")
                if "severity" not in r.get("labels", {}):
                    fail(f"PrometheusRule {name}: {r['alert']} lost its severity")


def check_render(root: str, rep: Report, out_dir: str | None) -> None:
    chart = os.path.join(root, CHART)
    # Default values alone must fail with a clear message: the DSN is required.
    try:
        render_chart(chart, [])
        rep.fail("render", "default values render although secret.postgresDsn is empty")
    except TemplateError as e:
        if "secret.postgresDsn is required" not in str(e):
            rep.fail("render", f"default values: unexpected error {e}")
        else:
            rep.ok("render", "default values stop with 'secret.postgresDsn is required'")
    files = ci_values(chart)
    if not files:
        rep.fail("render", f"no {CHART}/ci/*.yaml values to render with")
    for path in files:
        label = os.path.relpath(path, chart)
        try:
            docs, notes, values = render_chart(chart, [path])
        except (TemplateError, CheckError) as e:
            rep.fail("render", f"{label}: {e}")
            continue
        kinds = sorted({d["kind"] for d in docs})
        before = len(rep.failures)
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
            dest = os.path.join(out_dir, os.path.basename(path))
            with open(dest, "w", encoding="utf-8") as f:
                yaml.safe_dump_all([{k: v for k, v in d.items() if k != "__file__"}
                                    for d in docs], f, sort_keys=False)
        check_manifests(label, docs, values, root, rep)
        if not notes.strip():
            rep.fail("render", f"{label}: NOTES.txt renders empty")
        if len(rep.failures) == before:
            rep.ok("render", f"{label}: {len(docs)} manifests ({', '.join(kinds)})")


METRIC_NAME = re.compile(r'\.Name\("(evp_[a-z0-9_]+)"\)')
METRIC_REF = re.compile(r"\b(evp_[a-z0-9_]+)\b")


def check_monitoring(root: str, rep: Report, promql_out: str | None) -> None:
    with open(os.path.join(root, "internal/observability/metrics.cpp"), encoding="utf-8") as f:
        cpp = f.read()
    metrics = set(METRIC_NAME.findall(cpp))
    if not metrics:
        rep.fail("monitoring", "no metric names found in metrics.cpp")
        return
    labels = set(re.findall(r'\{\{?"([a-z_]+)",', cpp)) | {"job", "instance", "namespace",
                                                              "le", "pod"}
    histograms = set(re.findall(r'BuildHistogram\(\)\s*\.Name\("(evp_[a-z0-9_]+)"\)', cpp))

    def known(name: str) -> bool:
        if name in metrics:
            return True
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and name[: -len(suffix)] in histograms:
                return True
        return False

    files = os.path.join(root, CHART, "files")
    with open(os.path.join(files, "prometheus-rules.yaml"), encoding="utf-8") as f:
        rules = yaml.safe_load(f)
    with open(os.path.join(files, "grafana-dashboard.json"), encoding="utf-8") as f:
        dashboard = json.load(f)
    exprs: list[tuple[str, str]] = []
    alerts = []
    for g in rules["groups"]:
        for r in g["rules"]:
            exprs.append((f"alert {r.get('alert')}", r["expr"]))
            alerts.append(r.get("alert"))

    def panels(items: list) -> list:
        out = []
        for p in items:
            out.append(p)
            out += panels(p.get("panels", []))
        return out

    dash_exprs = []
    for p in panels(dashboard.get("panels", [])):
        for t in p.get("targets", []):
            if t.get("expr"):
                dash_exprs.append((f"panel {p.get('title')!r}", t["expr"]))
    for v in dashboard.get("templating", {}).get("list", []):
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if isinstance(q, str) and "evp_" in q:
            exprs.append((f"variable {v['name']}", q))
    before = len(rep.failures)
    for where, expr in exprs + dash_exprs:
        for name in METRIC_REF.findall(expr):
            if not known(name):
                rep.fail("monitoring", f"{where}: metric {name} is not defined in metrics.cpp")
        # Labels the expression makes itself: label_replace(v, "dst", "replacement", "src",
        # "regex"), matched by its four string arguments.
        made = set(re.findall(r'"([a-z_]+)"\s*,\s*"[^"]*"\s*,\s*"[a-z_]*"\s*,\s*"[^"]*"\s*\)',
                              expr))
        for label in re.findall(r"(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
            for lab in filter(None, (x.strip() for x in label.split(","))):
                if lab not in labels and lab not in made:
                    rep.fail("monitoring", f"{where}: label {lab} is not exported")
        for lab in re.findall(r"[{,]\s*([a-z_]+)\s*(?:=~|!~|!=|=)", expr):
            if lab not in labels:
                rep.fail("monitoring", f"{where}: label {lab} is not exported")
        for value in re.findall(r'outcome\s*(?:=|!=)\s*"([a-z_]+)"', expr):
            if f'return "{value}"' not in cpp:
                rep.fail("monitoring", f"{where}: outcome {value} is never exported")
    if len(rep.failures) == before:
        rep.ok("monitoring", f"{len(exprs) + len(dash_exprs)} PromQL expressions use only "
                             f"metrics and labels of metrics.cpp")
    with open(os.path.join(root, "docs/alerts.md"), encoding="utf-8") as f:
        runbook = f.read()
    headings = {h.strip() for h in re.findall(r"^##+\s+(.+)$", runbook, re.M)}
    with open(os.path.join(files, "prometheus-rules.test.yaml"), encoding="utf-8") as f:
        tests = yaml.safe_load(f)
    tested_firing = set()
    tested_silent = set()
    for t in tests.get("tests", []):
        for a in t.get("alert_rule_test", []):
            (tested_firing if a.get("exp_alerts") else tested_silent).add(a["alertname"])
    before = len(rep.failures)
    for alert in alerts:
        if alert not in headings:
            rep.fail("monitoring", f"alert {alert} has no '## {alert}' section in docs/alerts.md")
        if alert not in tested_firing:
            rep.fail("monitoring", f"alert {alert} has no promtool test where it fires")
        if alert not in tested_silent:
            rep.fail("monitoring", f"alert {alert} has no promtool test where it stays silent")
    for g in rules["groups"]:
        for r in g["rules"]:
            rb = r.get("annotations", {}).get("runbook", "")
            if rb != f"docs/alerts.md#{r['alert'].lower()}":
                rep.fail("monitoring", f"alert {r['alert']}: runbook annotation {rb!r}")
            if r.get("labels", {}).get("severity") not in ("warning", "critical", "info"):
                rep.fail("monitoring", f"alert {r['alert']}: severity label missing or odd")
    if len(rep.failures) == before:
        rep.ok("monitoring", f"{len(alerts)} alerts have runbook entries and firing/silent "
                             f"tests")
    # Dashboard sanity: unique ids, a datasource variable, no hard-coded datasource.
    ids = [p.get("id") for p in panels(dashboard.get("panels", []))]
    if len(ids) != len(set(ids)):
        rep.fail("monitoring", "dashboard panel ids are not unique")
    for p in panels(dashboard.get("panels", [])):
        ds = p.get("datasource")
        if p.get("type") != "row" and (not ds or ds.get("uid") != "${datasource}"):
            rep.fail("monitoring", f"panel {p.get('title')!r} does not use ${{datasource}}")
    if promql_out:
        # Grafana variables replaced, each query becomes a recording rule for promtool.
        recs = []
        for n, (where, expr) in enumerate(dash_exprs):
            e = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
            e = re.sub(r"\$\{?[A-Za-z_]+\}?", ".*", e)
            recs.append({"record": f"dashboard:query_{n}", "expr": e})
        with open(promql_out, "w", encoding="utf-8") as f:
            yaml.safe_dump({"groups": [{"name": "grafana-dashboard-queries", "rules": recs}]},
                           f, sort_keys=False)


def check_compose(root: str, rep: Report) -> None:
    with open(os.path.join(root, "docker-compose.yml"), encoding="utf-8") as f:
        compose = yaml.safe_load(f)
    services = compose.get("services", {})
    want = {"nats", "postgres", "migrate", "events-processor", "dlq-worker", "prometheus",
            "grafana"}
    for s in sorted(want - set(services)):
        rep.fail("compose", f"service {s} is missing")
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if src.startswith("./") or src.startswith("/"):
                if not os.path.exists(os.path.join(root, src)):
                    rep.fail("compose", f"{name}: bind mount source {src} does not exist")
    deps = services.get("events-processor", {}).get("depends_on", {})
    if deps.get("migrate", {}).get("condition") != "service_completed_successfully":
        rep.fail("compose", "events-processor must wait for migrate to complete successfully")
    if services.get("migrate", {}).get("depends_on", {}).get("postgres", {}).get(
            "condition") != "service_healthy":
        rep.fail("compose", "migrate must wait for a healthy postgres")
    if "grafana" not in (services.get("grafana", {}).get("profiles") or []):
        rep.fail("compose", "grafana must be in the optional profile 'grafana'")
    rep.ok("compose", "services, dependencies and bind-mounted files checked")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(
        __file__))))
    ap.add_argument("--eventctl", default=None, help="eventctl binary for default checks")
    ap.add_argument("--promql-out", default=None, help="write dashboard queries as rules")
    ap.add_argument("--render-out", default=None, help="write rendered manifests here")
    ap.add_argument("checks", nargs="*",
                    default=["schema", "values", "config", "render", "monitoring", "compose"])
    args = ap.parse_args()
    rep = Report()
    for check in args.checks:
        print(f"check_deploy: {check}")
        try:
            if check == "schema":
                check_schema(args.root, rep)
            elif check == "values":
                check_values(args.root, rep)
            elif check == "config":
                check_config(args.root, rep, args.eventctl)
            elif check == "render":
                check_render(args.root, rep, args.render_out)
            elif check == "monitoring":
                check_monitoring(args.root, rep, args.promql_out)
            elif check == "compose":
                check_compose(args.root, rep)
            else:
                rep.fail(check, "unknown check")
        except (CheckError, TemplateError, OSError, KeyError, yaml.YAMLError) as e:
            rep.fail(check, f"{type(e).__name__}: {e}")
    if rep.failures:
        print(f"check_deploy: {len(rep.failures)} failure(s)")
        return 1
    print("check_deploy: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

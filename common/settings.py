"""
Settings: a script's defaults, then config files (plain Python), then --key=value. A config's `model = 'llama'`
picks models/llama.py; keys that are fields of that file's Config go to the model, the others must be the script's.
"""

import dataclasses
import difflib
import importlib
import os
import traceback
from ast import literal_eval

from common import die

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_model_module(name):
    path = os.path.join(ROOT, "models", f"{name}.py")
    if not isinstance(name, str) or not os.path.isfile(path):
        have = sorted(f[:-3] for f in os.listdir(os.path.dirname(path)) if f.endswith(".py") and f != "__init__.py")
        die(f"unknown model {name!r}: there is no models/{name}.py (have: {', '.join(have)})")
    module = importlib.import_module(f"models.{name}")
    missing = [a for a in ("Config", "Model") if not hasattr(module, a)]
    missing += [f"Model.{a}" for a in ("forward", "generate", "flops_per_token")
                if "Model" not in missing and not hasattr(module.Model, a)]
    if missing or not dataclasses.is_dataclass(module.Config):
        die(f"models/{name}.py does not follow the model interface (missing {', '.join(missing) or 'a dataclass Config'}); "
            f"see 'The model interface' in README.md")
    return module


class Raw(str):
    """A value typed on the command line, kept as text until its setting's default says what it should be."""


def check_type(key, value, default):
    if isinstance(value, Raw):  # --key=value: text for a text setting, else a Python literal (3, 1e-3, True, 128,512)
        if isinstance(default, str) and default != "auto":
            value = str(value)
        else:
            try:
                value = literal_eval(value)
            except (ValueError, SyntaxError):
                value = str(value)  # a plain word such as --device=cuda
    if default is None or value is None or isinstance(default, str) and default == "auto":
        return value
    if isinstance(default, tuple):  # a list setting: --contexts=128,512 or a single --contexts=128
        value = tuple(value) if isinstance(value, (tuple, list)) else (value,)
        ok = all(isinstance(v, type(default[0])) for v in value)
    elif isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(value, bool) and isinstance(default, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float))
        value = float(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        die(f"{key}={value!r} has type {type(value).__name__}, expected {type(default).__name__}")
    return value


def read_settings(argv):
    """Config files and --key=value, in order, later ones winning: -> {key: value}. `--vs-hf` is `--vs_hf`, and a
    bare `--resume` is `--resume=True`."""
    settings = {}
    for arg in argv:
        if not arg.startswith("--"):
            if not os.path.isfile(arg):
                hint = "" if arg.endswith(".py") else "; settings are written --key=value"
                die(f"config file {arg} not found{hint}")
            scope = {}
            try:
                exec(compile(open(arg).read(), arg, "exec"), scope)
            except Exception as e:  # a config file is plain Python: point at the line that failed
                line = e.lineno if isinstance(e, SyntaxError) else next(
                    f.lineno for f in reversed(traceback.extract_tb(e.__traceback__)) if f.filename == arg)
                die(f"config file {arg}, line {line}: {type(e).__name__}: {e.msg if isinstance(e, SyntaxError) else e}")
            settings.update({k: v for k, v in scope.items() if not k.startswith("_") and not callable(v)
                             and not isinstance(v, type(os))})
        else:
            key, eq, val = arg[2:].partition("=")
            settings[key.replace("-", "_")] = Raw(val if eq else "True")
    return settings


def unknown_setting(key, valid, script, where=""):
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    die(f"unknown setting {key!r} for {script}{where}; {hint}valid keys: {', '.join(valid)}")


def parse_args(argv, defaults, script):
    """Settings of a script that builds no model from them (sample.py): its own keys only."""
    own = dict(defaults)
    for key, val in read_settings(argv).items():
        if key not in defaults:
            unknown_setting(key, list(defaults), script)
        own[key] = check_type(key, val, defaults[key])
    return own


def parse_config(argv, defaults, script, foreign=()):
    """-> (script settings, model module, model Config kwargs). Config files first, then --key=value overrides.
    `defaults` holds the script's own keys (with a `model` entry); any other key must be a field of the model's Config.
    `foreign`: another script's keys that config files may hold (bench.py reads train.py's configs); they are left
    out with a note, and refused on the command line, where they would do nothing."""
    settings = read_settings(argv)
    unused = [k for k in settings if k in foreign and k not in defaults]
    for key in unused:
        if isinstance(settings.pop(key), Raw):
            die(f"--{key} is a {foreign[key] if isinstance(foreign, dict) else 'training'} setting that {script} "
                f"does not use; leave it out")
    if unused:
        print(f"({script} does not use these settings of the config: {', '.join(unused)})")
    name = settings.get("model", defaults["model"])
    module = load_model_module(str(name) if isinstance(name, Raw) else name)
    model_defaults = {f.name: f.default for f in dataclasses.fields(module.Config)}
    own, model = dict(defaults), {}
    for key, val in settings.items():
        if key in defaults:
            own[key] = check_type(key, val, defaults[key])
        elif key in model_defaults:
            model[key] = check_type(key, val, model_defaults[key])
        else:
            unknown_setting(key, list(defaults) + list(model_defaults), script, f" with models/{name}.py")
    return own, module, model


def build_model(module, model_kwargs):
    name = module.__name__.split(".")[-1]
    unknown = set(model_kwargs) - {f.name for f in dataclasses.fields(module.Config)}
    if unknown:  # e.g. a checkpoint's config from before the model file was edited
        die(f"models/{name}.py's Config has no field(s) {', '.join(sorted(unknown))}; was the model file edited?")
    try:
        return module.Model(module.Config(**model_kwargs))
    except (ValueError, AssertionError) as e:
        die(f"invalid model config for models/{name}.py: {e}")

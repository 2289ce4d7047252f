"""The machinery of configs: sections, composition, checks, JSON. It knows no key.

A config section is a frozen dataclass (`Section`) in the module that reads it: its fields are
the keys with their defaults (a comment each), and its `check` the rules they must follow (the
allowed values are that module's own). A run config composes the sections its model and
objective read (`sslm_jax.train.runs.run_config`), a pipeline config those of its runs
(`sslm_jax.pipeline_config`). `compose` turns a schema (a ConfigDict section name -> the
dataclasses whose fields make it) into the locked ConfigDict a config file changes: a misspelled
key is an error, not a new key. `problems` checks every key of every section and reports every
problem at once, each naming the key, its value and what is allowed.
"""

import dataclasses
import json
import typing
from typing import Any, Mapping

import ml_collections

TOP = ''  # the schema entry of top-level keys (a run's `seed`, a pipeline's `name`)
Schema = Mapping[str, tuple[type, ...]]


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key and what is allowed."""


@dataclasses.dataclass(frozen=True)
class Section:
  """Base of the dataclasses that define config keys: subclass with fields (keys and defaults)
  and override `check` for the rules beyond each field's type."""
  @classmethod
  def keys(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))

  @classmethod
  def defaults(cls) -> dict[str, Any]:
    return {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(cls)}

  @classmethod
  def of(cls, values: Mapping[str, Any]):
    """The section's values (a ConfigDict section, or any mapping holding its keys) as this
    dataclass; keys of other fragments of the same section are ignored."""
    return cls(**{k: values[k] for k in cls.keys() if k in values})

  def check(self, c: 'Checker') -> None:
    """Reports what the field types do not say through `c` (see Checker)."""


# --- flat views -------------------------------------------------------------------------------

def flatten(d: Mapping, prefix: str = '') -> dict[str, Any]:
  out = {}
  for key, value in d.items():
    path = f'{prefix}{key}'
    if isinstance(value, Mapping):
      out.update(flatten(value, path + '.'))
    else:
      out[path] = value
  return out


def _path(section: str, key: str) -> str:
  return f'{section}.{key}' if section else key


def schema_keys(schema: Schema) -> dict[str, tuple[type, Any]]:
  """{dotted key: (the Section class that defines it, its default)} of a schema."""
  out = {}
  for section, classes in schema.items():
    for cls in classes:
      hints = typing.get_type_hints(cls)
      for key, default in cls.defaults().items():
        path = _path(section, key)
        if path in out:
          raise TypeError(f'{path} is defined twice: by {out[path][0].__name__} and '
                          f'{cls.__name__}')
        out[path] = (hints[key], default)
  return out


def compose(schema: Schema, **values) -> ml_collections.ConfigDict:
  """The locked ConfigDict of `schema` with its defaults, then `values` ({'model.name': ...})."""
  config = ml_collections.ConfigDict()
  for section, classes in schema.items():
    target = config
    if section:
      target = config[section] = ml_collections.ConfigDict()
    for cls in classes:
      for key, default in cls.defaults().items():
        target[key] = default
  for path, value in values.items():
    _set(config, path, value)
  config.lock()
  return config


def _set(config, path: str, value) -> None:
  section, _, key = path.rpartition('.')
  (config[section] if section else config)[key] = value


# --- checks -----------------------------------------------------------------------------------

def _type_ok(value, hint) -> bool:
  if hint is bool:
    return isinstance(value, bool)
  if hint is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if hint is float:
    return isinstance(value, float)
  if hint is str:
    return isinstance(value, str)
  if typing.get_origin(hint) is tuple:
    item = typing.get_args(hint)[0]
    return isinstance(value, (tuple, list)) and all(_type_ok(v, item) for v in value)
  return True


def _type_name(hint) -> str:
  names = {bool: 'True or False', int: 'an integer', float: 'a float', str: 'a string'}
  if hint in names:
    return names[hint]
  if typing.get_origin(hint) is tuple:
    return f'a tuple of {_type_name(typing.get_args(hint)[0])[2:]}s'
  return str(hint)


class Checker:
  """What `Section.check` reports through: at most one problem a key (the first), each as
  `key=value is invalid; allowed: ...`. Keys are the section's own, or dotted (any section's).

  `valid(*keys)` says whether keys hold values of their types with no problem so far: guard a
  rule that combines keys with it, so that one wrong value is one message.
  """

  def __init__(self, given: Mapping[str, Any], types: Mapping[str, Any], found: dict,
               section: str = TOP, facts: Mapping[str, Any] | None = None):
    self._given, self._types, self._found = given, types, found
    self._section = section
    self.facts = dict(facts or {})  # what the composer knows of the run (e.g. its inputs)
    self.touched = set()

  def for_section(self, section: str) -> 'Checker':
    c = Checker(self._given, self._types, self._found, section, self.facts)
    c.touched = self.touched
    return c

  def key(self, key: str) -> str:
    return key if '.' in key or not self._section else _path(self._section, key)

  def get(self, key: str, default=None):
    return self._given.get(self.key(key), default)

  def valid(self, *keys: str) -> bool:
    paths = [self.key(k) for k in keys]
    return all(p in self._given and p not in self._found and
               _type_ok(self._given[p], self._types.get(p)) for p in paths)

  def check(self, ok: bool, key: str, allowed: str) -> bool:
    path = self.key(key)
    self.touched.add(path)
    if not ok and path not in self._found:
      self._found[path] = f'{path}={self._given.get(path)!r} is invalid; allowed: {allowed}'
    return bool(ok)

  def choice(self, key: str, options, note: str = '') -> bool:
    return self.check(self.get(key) in options, key, ', '.join(map(repr, options)) + note)

  def integer(self, key: str, minimum: int = 1) -> bool:
    value = self.get(key)
    return self.check(_type_ok(value, int) and value >= minimum, key,
                      f'an integer >= {minimum}')

  def number(self, key: str, low: float | None = None, high: float | None = None, *,
             low_open: bool = False, high_open: bool = False, note: str = '') -> bool:
    """A float within [low, high] (either end open, or absent)."""
    value = self.get(key)
    ok = _type_ok(value, float)
    if ok and low is not None:
      ok = value > low if low_open else value >= low
    if ok and high is not None:
      ok = value < high if high_open else value <= high
    if low is not None and high is not None:
      allowed = f'a float in {"(" if low_open else "["}{low:g}, {high:g}{")" if high_open else "]"}'
    elif low is not None:
      allowed = f'a float {">" if low_open else ">="} {low:g}'
    else:
      allowed = 'a float'
    return self.check(ok, key, allowed + note)

  def positive_ints(self, key: str) -> bool:
    value = self.get(key)
    return self.check(isinstance(value, (tuple, list)) and len(value) > 0 and
                      all(_type_ok(v, int) and v >= 1 for v in value), key,
                      'a non-empty tuple of positive integers')

  def nonempty(self, key: str, allowed: str = 'a non-empty string') -> bool:
    value = self.get(key)
    return self.check(isinstance(value, str) and bool(value), key, allowed)


def key_problems(given: Mapping[str, Any], reference) -> list[str]:
  """Unknown and missing keys of the flat `given` against the dotted keys of `reference`."""
  reference = set(reference)
  found = [f'unknown key {key!r}; known keys under it: '
           f'{sorted(k for k in reference if k.rpartition(".")[0] == key.rpartition(".")[0])}'
           for key in sorted(set(given) - reference)]
  return found + [f'missing key {key!r}' for key in sorted(reference - set(given))]


def check_problems(given: Mapping[str, Any], schema: Schema, *,
                   facts: Mapping[str, Any] | None = None) -> list[str]:
  """Each section's `check` on the flat values `given` (defaults where a key is missing), then
  the type of every key of `schema` that no check looked at."""
  reference = schema_keys(schema)
  by_key = {}
  checker = Checker(given, {k: hint for k, (hint, _) in reference.items()}, by_key, facts=facts)
  for section, classes in schema.items():
    for cls in classes:
      cls(**{k: given.get(_path(section, k), d) for k, d in cls.defaults().items()}).check(
          checker.for_section(section))
  for path, (hint, _) in reference.items():
    if path in given and path not in checker.touched:
      checker.check(_type_ok(given[path], hint), path, _type_name(hint))
  return list(by_key.values())


def problems(config: ml_collections.ConfigDict, schema: Schema, *,
             facts: Mapping[str, Any] | None = None) -> list[str]:
  """Every problem of `config` against `schema`, one message each (empty when it is usable):
  unknown and missing keys, each section's `check`, and the type of every key no check looked
  at."""
  given = flatten(config.to_dict())
  return (key_problems(given, schema_keys(schema)) +
          check_problems(given, schema, facts=facts))


def raise_if(found: list[str], what: str = 'invalid config') -> None:
  if found:
    raise ConfigError(f'{what}:\n  ' + '\n  '.join(dict.fromkeys(found)))


# --- JSON and comparisons ---------------------------------------------------------------------

def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True)


def json_values(text: str) -> dict:
  """The nested values of a config saved by `to_json` (lists back to tuples)."""
  def tuples(value):
    if isinstance(value, dict):
      return {k: tuples(v) for k, v in value.items()}
    return tuple(value) if isinstance(value, list) else value
  values = json.loads(text)
  if not isinstance(values, dict):
    raise ValueError(f'a config is a JSON object; got {type(values).__name__}')
  return tuples(values)


def conform(values: Mapping, schema: Schema) -> tuple[ml_collections.ConfigDict, dict]:
  """(the config of `schema` holding `values` where it has their keys (its defaults elsewhere),
  {dotted key: value} of the values it has no key for)."""
  flat = flatten(values)
  reference = schema_keys(schema)
  config = compose(schema, **{k: v for k, v in flat.items() if k in reference})
  return config, {k: v for k, v in flat.items() if k not in reference}


def differences(a: ml_collections.ConfigDict, b: ml_collections.ConfigDict) -> dict[str, tuple]:
  """{key: (a value, b value)} for the flattened keys where the two configs differ."""
  fa, fb = flatten(a.to_dict()), flatten(b.to_dict())
  return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}

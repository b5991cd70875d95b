"""Load the catalogue of accelerators, prices and performance profiles (YAML) into core values.

The packaged ``catalogue.yaml`` is the default; a user's copy can replace it.  Validation
happens here, once, so the rest of the code can trust every ``Offering`` and ``Profile``.
Quotas are the account's, so the packaged catalogue sets none and offerings have no limit; a
copy may set them under ``quotas``: GPUs per accelerator and capacity class, of which an
offering of ``count``-GPU replicas gets ``GPUs // count`` replicas.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field

from fleetpilot.core.model import Accelerator, CapacityClass, Offering, Pool, Profile
from fleetpilot.errors import ConfigError

__all__ = ["Catalogue", "ProfileSpec", "load_catalogue"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Acc(_Strict):
    memory_gb: float = Field(gt=0)
    memory_bandwidth_gbps: float = Field(gt=0)


class _Price(_Strict):
    on_demand: float = Field(gt=0)
    spot: float | None = Field(default=None, gt=0)


class ProfileSpec(_Strict):
    """A profile as the catalogue's YAML writes it (also inline in a fleet file's pool, and
    what ``fleetpilot profile`` prints); ``source`` and other provenance keys are kept by
    the file, not here."""

    count: int = Field(default=1, ge=1)
    prefill_rate: float = Field(gt=0)
    max_batch: int = Field(ge=1)
    context_tokens: int = Field(default=8192, ge=1)
    step_points: list[tuple[int, float]]
    startup_s: float = Field(default=180.0, ge=0)

    def build(self, model: str, accelerator: str) -> Profile:
        try:
            return Profile(
                model=model,
                accelerator=accelerator,
                prefill_rate=self.prefill_rate,
                step_points=tuple((int(b), float(t)) for b, t in self.step_points),
                max_batch=self.max_batch,
                count=self.count,
                context_tokens=self.context_tokens,
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None


class _Discount(_Strict):
    factor: float = Field(gt=0, le=1)


class _CatalogueFile(_Strict):
    accelerators: dict[str, _Acc]
    prices: dict[str, _Price]
    reserved_discount: _Discount = _Discount(factor=0.6)
    spot_interruption_rate: dict[str, float] = {}
    spot_zones: dict[str, int] = {}
    quotas: dict[str, dict[CapacityClass, Annotated[int, Field(strict=True, ge=0)]]] = {}
    profiles: dict[str, dict[str, ProfileSpec]]


@dataclass(frozen=True)
class Catalogue:
    """What can be bought and how each model runs on it."""

    accelerators: dict[str, Accelerator]
    _file: _CatalogueFile

    @property
    def models(self) -> list[str]:
        return sorted(self._file.profiles)

    def accelerators_for(self, model: str) -> list[str]:
        return sorted(self._profiles_of(model))

    def _profiles_of(self, model: str) -> dict[str, ProfileSpec]:
        try:
            return self._file.profiles[model]
        except KeyError:
            raise ConfigError(f"no profile for model {model!r}; known: {self.models}") from None

    def profile(self, model: str, accelerator: str) -> Profile:
        profs = self._profiles_of(model)
        if accelerator not in profs:
            raise ConfigError(
                f"no profile for {model!r} on {accelerator!r}; known: {sorted(profs)}"
            )
        return profs[accelerator].build(model, accelerator)

    def offering(
        self, model: str, accelerator: str, capacity_class: CapacityClass | str
    ) -> Offering:
        """The offering a replica of ``model`` on ``accelerator`` needs (GPU count included)."""
        cls = CapacityClass(capacity_class)
        prof = self._profiles_of(model).get(accelerator)
        if prof is None:
            raise ConfigError(f"no profile for {model!r} on {accelerator!r}")
        price = self._file.prices.get(accelerator)
        if price is None:
            raise ConfigError(f"no price for accelerator {accelerator!r}")
        if cls is CapacityClass.SPOT:
            if price.spot is None:
                raise ConfigError(f"{accelerator} has no spot price in the catalogue")
            per_gpu = price.spot
        elif cls is CapacityClass.RESERVED:
            per_gpu = price.on_demand * self._file.reserved_discount.factor
        else:
            per_gpu = price.on_demand
        rate = self._file.spot_interruption_rate.get(accelerator, 0.0)
        zones = self._file.spot_zones.get(accelerator, 1) if cls is CapacityClass.SPOT else 1
        if zones < 1:
            raise ConfigError(f"spot_zones of {accelerator!r} must be at least 1, not {zones}")
        gpus = self._file.quotas.get(accelerator, {}).get(cls)
        suffix = f"x{prof.count}" if prof.count > 1 else ""
        return Offering(
            name=f"{accelerator}{suffix}-{cls.value}",
            accelerator=accelerator,
            capacity_class=cls,
            price_per_hour=round(per_gpu * prof.count, 6),
            count=prof.count,
            startup_s=prof.startup_s,
            interruption_rate=rate if cls is CapacityClass.SPOT else 0.0,
            zones=zones,
            quota=None if gpus is None else gpus // prof.count,
        )

    def pools(
        self,
        model: str,
        accelerators: list[str] | None = None,
        classes: tuple[CapacityClass, ...] = (CapacityClass.ON_DEMAND, CapacityClass.SPOT),
    ) -> tuple[Pool, ...]:
        """One pool per (accelerator, capacity class) the catalogue can price for ``model``,
        named ``<offering name>`` (e.g. ``A10G-spot``), each with target 0."""
        out: list[Pool] = []
        for acc in accelerators or self.accelerators_for(model):
            profile = self.profile(model, acc)
            for cls in classes:
                try:
                    offering = self.offering(model, acc, cls)
                except ConfigError:
                    continue  # e.g. no spot price for this accelerator
                out.append(Pool(offering.name, model, offering, 0, profile))
        return tuple(out)


def load_catalogue(path: str | Path | None = None) -> Catalogue:
    """Read ``path``, or the packaged default when it is None."""
    try:
        if path is None:
            text = resources.files("fleetpilot").joinpath("catalogue.yaml").read_text()
        else:
            text = Path(path).read_text()
        raw = yaml.safe_load(text)
        parsed = _CatalogueFile.model_validate(raw)
    except (OSError, yaml.YAMLError, ValueError) as exc:
        raise ConfigError(f"cannot load catalogue {path or '(packaged)'}: {exc}") from exc
    accs = {
        name: Accelerator(name, a.memory_gb, a.memory_bandwidth_gbps)
        for name, a in parsed.accelerators.items()
    }
    unknown = sorted(set(parsed.quotas) - set(accs))
    if unknown:
        raise ConfigError(f"quotas for unknown accelerators {unknown}; known: {sorted(accs)}")
    cat = Catalogue(accs, parsed)
    for model in cat.models:  # build every profile once so a bad table fails at load time
        for acc in cat.accelerators_for(model):
            try:
                cat.profile(model, acc)
            except ValueError as exc:
                raise ConfigError(str(exc)) from exc
    return cat

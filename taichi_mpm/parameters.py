"""The material parameters: one table of names, units, physical limits, default values and fit ranges.

Everything that knows what a material parameter is reads it from here: ``simulate``'s input
validation, the scene-file parser (admissible values, defaults, ``[object.fit]`` ranges) and the fit
(which parameters live in log space).  Object kinds are ``"cloth"`` (membrane stiffnesses in N/m,
areal density in kg/m^2) and ``"solid"`` (Young's modulus in Pa, density in kg/m^3).
"""

from __future__ import annotations

import dataclasses
import math

KINDS = ("cloth", "solid")


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One material parameter.

    ``low``/``high`` (with ``low_inclusive``/``high_inclusive``): the physically admissible values;
    a value outside is an error, never a clamp.  ``units``, ``defaults`` and ``ranges`` (the default
    fit range) per object kind; a kind missing from ``defaults`` does not have the parameter.
    ``log_space``: fitted in log space (stiffness-like and density parameters) rather than in a
    squashed linear box.  ``note``: what validation adds to its rule.  ``off``: a value outside the
    limits that is admitted too and switches the parameter's term off (max_stretch 0: no limit).
    """

    name: str
    low: float
    high: float
    low_inclusive: bool
    high_inclusive: bool
    log_space: bool
    units: dict[str, str]
    defaults: dict[str, float]
    ranges: dict[str, tuple[float, float]]
    note: str = ""
    off: float | None = None

    def admits(self, value: float) -> bool:
        """Whether ``value`` (a finite number, or elementwise for a tensor) lies within the physical limits."""
        above = (value > self.low) | ((value == self.low) & self.low_inclusive)
        below = (value < self.high) | ((value == self.high) & self.high_inclusive)
        if self.off is not None:
            return (above & below) | (value == self.off)
        return above & below

    def interval(self) -> str:
        """The limits as an interval, e.g. ``[0, 0.5)`` or ``(0, inf)``."""
        return ("[" if self.low_inclusive else "(") + f"{self.low:g}, {self.high:g}" + ("]" if self.high_inclusive else ")")

    def rule(self) -> str:
        """The limits as a rule for messages: ``> 0``, ``>= 0``, ``in [0, 0.5)``."""
        if math.isinf(self.high):
            text = (">= " if self.low_inclusive else "> ") + f"{self.low:g}"
        else:
            text = f"in {self.interval()}"
        if self.off is not None:
            text = f"{self.off:g} or {text}"
        return f"{text} ({self.note})" if self.note else text


_POSITIVE = dict(low=0.0, high=math.inf, low_inclusive=False, high_inclusive=False)
_NON_NEGATIVE = dict(low=0.0, high=math.inf, low_inclusive=True, high_inclusive=False)

#: Every material parameter in a fixed order (the order of validation, of the scene's parameters
#: and of the fitted vector).  Default fit ranges (damping per DESIGN.md section 2: fraction kept per
#: second).  Cloth, from measured fabrics where the quantity has a measurement:
#: - density (kg/m^2): apparel fabrics weigh 30 (chiffon, voile) to 500 g/m^2 (heavy denim, canvas)
#:   by ASTM D3776; the ten fabrics of Wang, O'Brien and Ramamoorthi 2011 ("Data-driven elastic
#:   models for cloth", SIGGRAPH; their public material files) weigh 0.187-0.324 kg/m^2.
#: - bending_stiffness (N m): Wang et al. 2011 measured 7e-6 (t-shirt interlock, weakest direction)
#:   to 1.2e-4 (11 oz denim, strongest); KES-FB2 bending rigidities of apparel fabrics span
#:   ~1e-6-1e-4 N m (Kawabata 1980, "The standardization and analysis of hand evaluation").
#: - drag_coefficient: a flat plate normal to the flow has C_d ~ 1.17 (square) to ~2 (long strip)
#:   (Hoerner 1965, "Fluid-dynamic drag", ch. 3); 0 allows for a video without air.
#: - young_modulus (membrane, N/m): real woven fabrics are ~1e3-1e4 N/m, which costs 5-10x the
#:   substeps (CFL); the range stays below that until a strain limit or a faster engine pays for it.
#: - max_stretch (the largest principal stretch a cloth triangle may reach, see strain_limit): woven
#:   fabrics stretch a few percent under their own weight at most (membrane stiffness 1e3-1e4 N/m,
#:   above); the range to 1.2 leaves room for knits.  0 (the default) is no limit, so scenes written
#:   before the limit existed behave as they did.
#: - drag_tangential: the share of drag_coefficient that acts on the speed along the sheet (see
#:   cloth_forces): 0 is an impermeable plate, whose pressure drag acts along its normal (Hoerner
#:   1965); the force on an inclined porous sheet or screen turns from its normal toward the flow
#:   (Taylor and Davies 1944, "The aerodynamics of porous sheets", ARC R&M 2237; Laws and Livesey
#:   1978, "Flow through screens", Annu. Rev. Fluid Mech. 10), and 1 is a force along the relative
#:   velocity (the aerodynamic model of NVIDIA Warp's and Newton's cloth, f = k A |v.n| v).
#: Default values: bending is Wang et al. 2011's t-shirt knit; drag a square plate (Hoerner 1965),
#: with no tangential part.
_TABLE = (
    Parameter("young_modulus", **_POSITIVE, log_space=True, units={"cloth": "N/m", "solid": "Pa"},
              defaults={"cloth": 100.0, "solid": 5e4}, ranges={"cloth": (10.0, 500.0), "solid": (1e3, 1e6)}),
    Parameter("poisson_ratio", low=0.0, high=0.5, low_inclusive=True, high_inclusive=False, log_space=False,
              units={"cloth": "1", "solid": "1"}, defaults={"cloth": 0.3, "solid": 0.3},
              ranges={"cloth": (0.1, 0.49), "solid": (0.1, 0.45)}),
    Parameter("density", **_POSITIVE, log_space=True, units={"cloth": "kg/m^2", "solid": "kg/m^3"},
              defaults={"cloth": 1.0, "solid": 1000.0}, ranges={"cloth": (0.03, 0.5), "solid": (100.0, 3000.0)}),
    Parameter("damping", low=0.0, high=1.0, low_inclusive=False, high_inclusive=True, log_space=False,
              units={"cloth": "1/s", "solid": "1/s"}, defaults={"cloth": 0.6, "solid": 0.9},
              ranges={"cloth": (0.05, 1.0), "solid": (0.05, 1.0)}, note="fraction of velocity kept per second"),
    Parameter("friction", **_NON_NEGATIVE, log_space=False, units={"cloth": "1", "solid": "1"},
              defaults={"cloth": 0.3, "solid": 0.5}, ranges={"cloth": (0.0, 1.0), "solid": (0.0, 1.0)}),
    Parameter("shear_stiffness", **_NON_NEGATIVE, log_space=True, units={"cloth": "N/m"},
              defaults={"cloth": 200.0}, ranges={"cloth": (100.0, 1000.0)}),
    Parameter("normal_stiffness", **_NON_NEGATIVE, log_space=True, units={"cloth": "N/m"},
              defaults={"cloth": 200.0}, ranges={"cloth": (100.0, 1000.0)}),
    # the cloth's own Coulomb friction in its return mapping; scenes give it as the object's friction
    Parameter("cloth_friction", **_NON_NEGATIVE, log_space=False, units={}, defaults={}, ranges={}),
    Parameter("bending_stiffness", **_NON_NEGATIVE, log_space=True, units={"cloth": "N m"},
              defaults={"cloth": 2e-5}, ranges={"cloth": (1e-6, 2e-4)}),
    Parameter("drag_coefficient", **_NON_NEGATIVE, log_space=False, units={"cloth": "1"},
              defaults={"cloth": 1.2}, ranges={"cloth": (0.0, 3.0)}),
    Parameter("max_stretch", low=1.0, high=math.inf, low_inclusive=True, high_inclusive=False, log_space=False,
              units={"cloth": "1"}, defaults={"cloth": 0.0}, ranges={"cloth": (1.0, 1.2)}, note="0: no limit", off=0.0),
    # last, so that the fitted vectors of scenes written before it keep their order
    Parameter("drag_tangential", low=0.0, high=1.0, low_inclusive=True, high_inclusive=True, log_space=False,
              units={"cloth": "1"}, defaults={"cloth": 0.0}, ranges={"cloth": (0.0, 1.0)},
              note="share of drag_coefficient on the speed along the sheet"),
)

#: name -> Parameter, in the table's order
PARAMETERS: dict[str, Parameter] = {p.name: p for p in _TABLE}


def parameters_of(kind: str) -> tuple[Parameter, ...]:
    """The parameters an object of ``kind`` ("cloth" or "solid") has, in the table's order."""
    return tuple(p for p in _TABLE if kind in p.defaults)

"""gigadream: DeepDream and neural style on giant photographs, at full resolution."""

__version__ = "0.1.0"

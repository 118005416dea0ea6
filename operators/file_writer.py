"""The one base of every writer operator: receive one result on a named port, write file(s) into
the app's output folder, log what was written. Subclasses say only *what* to write."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

from monai.deploy.core import Fragment, Operator, OperatorSpec

log = logging.getLogger(__name__)


class FileWriterOperator(Operator):
    port: ClassVar[str] = "in"  # the input port the result arrives on

    def __init__(self, fragment: Fragment, *args, output_folder: Path, **kwargs) -> None:
        self.output_folder = Path(output_folder)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input(self.port)

    def compute(self, op_input, op_output, context) -> None:
        for path in self.write(op_input.receive(self.port)):
            log.debug("wrote %s", path)  # the CLI lists what was written when the run succeeded

    def write(self, result: Any) -> list[Path]:
        """Write `result`; return the files written (empty when there is nothing to write)."""
        raise NotImplementedError

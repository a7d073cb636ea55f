"""Validates an OpenAPI document with the `openapi-spec-validator` package (PyPI), which
nobody here wrote.

usage: validate_openapi.py DOCUMENT_JSON
Prints the OpenAPI version it validated against; exits non-zero if the document is invalid.
"""

import json
import sys

from openapi_spec_validator import validate
from openapi_spec_validator.versions.shortcuts import get_spec_version


def main() -> None:
    with open(sys.argv[1], encoding="utf-8") as document_file:
        document = json.load(document_file)
    validate(document)
    print(get_spec_version(document))


if __name__ == "__main__":
    main()

"""Deploy stage: assemble a release, build its bento, stage it, test it over HTTP, promote it or mark it failed."""

from steps.deploy.assemble_release import assemble_release
from steps.deploy.build_bento import build_bento
from steps.deploy.promote_release import promote_release
from steps.deploy.start_staging import start_staging
from steps.deploy.test_staging import test_staging

__all__ = ["assemble_release", "build_bento", "promote_release", "start_staging", "test_staging"]

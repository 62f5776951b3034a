"""`python -m blendstudy.doctor [--device SPEC] [--json]`: the doctor's report (blendstudy.doctor.main)."""

from blendstudy.doctor import main

raise SystemExit(main())

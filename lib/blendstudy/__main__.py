from blendstudy.cli import main

raise SystemExit(main())

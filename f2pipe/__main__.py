from f2pipe.cli import main

raise SystemExit(main())

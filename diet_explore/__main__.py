from diet_explore.cli import main

raise SystemExit(main())

from convae.cli import main

raise SystemExit(main())
